"""Benchmarks: `python -m bench.<name>`; bench/run.py gathers them into one table."""
