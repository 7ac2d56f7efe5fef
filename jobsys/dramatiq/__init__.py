"""The Dramatiq adapter: the Redis broker (`broker`), every message jobsys sends
(`messages`) and their signatures (`signing`)."""
