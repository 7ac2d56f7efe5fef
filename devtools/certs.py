"""A throwaway certificate authority for tests: a CA, a server and a client certificate.

Made with the `openssl` command line at test time (nothing is downloaded):
EC P-256 keys, valid for one day, the server's for 127.0.0.1 and localhost.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from devtools.servers import ServiceError
from jobsys.display import one_line
from jobsys.ops.probes import LOCAL_HOST

OPENSSL = "openssl"
DAYS = "1"
KEY_OPTIONS = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pki:
    """Paths of a CA certificate and of a server and a client certificate it signed."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def have_openssl() -> bool:
    """Whether the openssl command line is installed."""
    return shutil.which(OPENSSL) is not None


def _run(args: list[str], cwd: Path) -> None:
    run = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if run.returncode != 0:
        raise ServiceError(f"openssl {args[0]} failed: {one_line(run.stderr or run.stdout)}")


def _issue(root: Path, name: str, subject: str, extensions: str) -> tuple[Path, Path]:
    key, csr, cert = root / f"{name}.key", root / f"{name}.csr", root / f"{name}.pem"
    ext = root / f"{name}.ext"
    # What strict verifiers (Python 3.13's default) ask of a leaf certificate.
    leaf = "basicConstraints=CA:FALSE\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid"
    ext.write_text(f"{leaf}\n{extensions}\n")
    _run(["req", *KEY_OPTIONS, "-keyout", key.name, "-out", csr.name, "-subj", subject], root)
    _run(
        ["x509", "-req", "-in", csr.name, "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", cert.name, "-days", DAYS, "-extfile", ext.name],
        root,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


def make_pki(root: Path) -> Pki:
    """A new CA in `root`, with a server certificate for 127.0.0.1/localhost and a
    client certificate."""
    root.mkdir(parents=True, exist_ok=True)
    _run(
        ["req", "-x509", *KEY_OPTIONS, "-keyout", "ca.key", "-out", "ca.pem",
         "-days", DAYS, "-subj", "/CN=jobsys test CA"],
        root,
    )  # fmt: skip
    (root / "ca.key").chmod(0o600)
    server_cert, server_key = _issue(
        root, "server", f"/CN={LOCAL_HOST}",
        f"subjectAltName=IP:{LOCAL_HOST},DNS:localhost\nextendedKeyUsage=serverAuth",
    )  # fmt: skip
    client_cert, client_key = _issue(
        root, "client", "/CN=jobsys-client", "extendedKeyUsage=clientAuth"
    )
    return Pki(root / "ca.pem", server_cert, server_key, client_cert, client_key)
