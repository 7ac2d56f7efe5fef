"""Benchmarks: each module has `run(quick) -> list[dict]` and runs alone with `python -m`."""
