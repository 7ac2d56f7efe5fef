"""The version of jobsys that is installed, as its distribution's metadata says."""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as distribution_version

# What a copy of the code that was never installed (no metadata) calls itself.
UNKNOWN = "0+unknown"


@lru_cache(maxsize=1)
def version() -> str:
    """The installed jobsys distribution's version (`jobsys --version`)."""
    try:
        return distribution_version("jobsys")
    except PackageNotFoundError:
        return UNKNOWN
