"""The worker process (`jobsys worker`): the Dramatiq actors (`actors`), the signature
check every message passes (`verify`), running and supervising workers (`run`) and the
reconcile scheduler (`scheduler`)."""
