"""The `jobsys` command line: click commands that parse, call jobsys, and print."""
