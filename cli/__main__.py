"""`python -m cli` runs the jobsys CLI (used to start child processes)."""

from cli.main import main

main()
