"""Debian packages the tests need on a fresh machine, installed with apt-get when missing.

`ensure_package` installs a package (as root, or with ``sudo -n``) when its
binary is missing, refreshing the package lists once if the first attempt
fails (a fresh machine's lists may be empty or old).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from devtools.servers import ServiceError

APT_TIMEOUT_S = 600


def ensure_package(package: str, binary: Path) -> str:
    """Install `package` when `binary` is missing; says what it did (ServiceError if it
    could not)."""
    if binary.exists():
        return f"installed ({binary})"
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-qq", package]
    run = subprocess.run(install, capture_output=True, text=True, env=env, timeout=APT_TIMEOUT_S)
    if run.returncode != 0:
        subprocess.run([*sudo, "apt-get", "update", "-qq"], capture_output=True,
                       env=env, timeout=APT_TIMEOUT_S)  # fmt: skip
        run = subprocess.run(install, capture_output=True, text=True, env=env,
                             timeout=APT_TIMEOUT_S)  # fmt: skip
    if run.returncode != 0 or not binary.exists():
        lines = (run.stderr or run.stdout).strip().splitlines()
        raise ServiceError(
            f"could not install {package} ({lines[-1] if lines else 'no output'}): "
            f"run `apt-get install {package}` as root"
        )
    return "installed with apt-get"
