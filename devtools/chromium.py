"""The browser the console's tests drive: Debian's `chromium`, through Playwright.

The tests never download a browser (`playwright install` fetches builds from
outside the package registries): they launch the Debian package's binary,
which `make test` installs when missing (`python -m devtools.services
install-chromium`).
"""

from __future__ import annotations

from pathlib import Path

from devtools.apt import ensure_package

BINARY = Path("/usr/bin/chromium")
# Headless in a container as root, on a loaded machine: no sandbox (root), no
# GPU, none of the background traffic a desktop browser starts.
ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def ensure_chromium() -> str:
    """Install Debian's chromium when missing; says what it did."""
    return ensure_package("chromium", BINARY)
