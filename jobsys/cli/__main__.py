"""`python -m jobsys.cli` runs the jobsys CLI (used to start child processes)."""

from jobsys.cli.main import main

main()
