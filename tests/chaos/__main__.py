"""`python -m tests.chaos`: one chaos run (see tests/chaos/__init__.py)."""

from tests.chaos.run import main

main()
