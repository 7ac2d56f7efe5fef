"""Private NATS and Redis servers configured from `deploy/`, on free local ports.

They prove the shipped least-privilege configurations with real servers:
`deploy/nats/jobsys.conf` (one account for the deployment, a worker and a
processor user) and `deploy/redis/jobsys-acl.conf` (one Redis user per role),
rendered for a namespace: the task subjects and the Dramatiq key prefix carry
it, and random passwords replace the placeholders. Optionally with TLS
(devtools.certs) and with the processor authenticating by nkey.

No password goes on a command line: nats-server reads them from its
environment (the configuration refers to `$JOBSYS_NATS_*_PASSWORD`),
redis-server from a file readable by its owner only that holds their SHA-256
hashes.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import subprocess
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from devtools.certs import Pki
from devtools.process import free_port, log_tail, terminate, wait_until_up
from devtools.servers import Nats, Redis, ServiceError
from devtools.services import write_private
from jobsys.ops.probes import LOCAL_HOST

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
NATS_CONFIG = DEPLOY / "nats" / "jobsys.conf"
REDIS_ACL = DEPLOY / "redis" / "jobsys-acl.conf"
# The namespace and paths the shipped files are written for.
SHIPPED_NAMESPACE = "jobsys"
SHIPPED_STORE_DIR = "/var/lib/nats-server"
WORKER = "jobsys-worker"
PROCESSOR = "jobsys-processor"
PASSWORD_ENV = {WORKER: "JOBSYS_NATS_WORKER_PASSWORD", PROCESSOR: "JOBSYS_NATS_PROCESSOR_PASSWORD"}
_PROCESSOR_LOGIN = "user: jobsys-processor, password: $JOBSYS_NATS_PROCESSOR_PASSWORD"
_NO_PASSWORD = "#" + "0" * 64


def password() -> str:
    """A random password nats-server reads as a string from an environment variable:
    it reads a value starting with "-" (1 in 64 of token_urlsafe's) as a number
    and refuses to start ("Expected a digit but got 'Q'"); this one starts with
    a letter."""
    return "p" + secrets.token_urlsafe(18)


def _replace(text: str, old: str, new: str, source: Path) -> str:
    if old not in text:
        raise ServiceError(f"{source} changed: {old!r} not found; update devtools/secure.py")
    return text.replace(old, new)


def render_nats_config(
    namespace: str, store_dir: Path, pki: Pki | None = None, processor_nkey: str | None = None
) -> str:
    """deploy/nats/jobsys.conf for `namespace`, its JetStream data in `store_dir`; with
    `pki`, clients must use TLS and present a certificate; with `processor_nkey` (a
    public key), the processor user logs in by nkey instead of a password."""
    text = NATS_CONFIG.read_text(encoding="utf-8")
    for subject in ("tasks.*", "jobs.*.*", "gateway.taken"):
        text = _replace(
            text, f'"{SHIPPED_NAMESPACE}.{subject}"', f'"{namespace}.{subject}"', NATS_CONFIG
        )
    text = _replace(text, f"{SHIPPED_NAMESPACE}_members", f"{namespace}_members", NATS_CONFIG)
    text = _replace(text, SHIPPED_STORE_DIR, str(store_dir), NATS_CONFIG)
    if processor_nkey is not None:
        text = _replace(text, _PROCESSOR_LOGIN, f"nkey: {processor_nkey}", NATS_CONFIG)
    if pki is not None:
        text += (
            "\ntls {\n"
            f'  cert_file: "{pki.server_cert}"\n'
            f'  key_file: "{pki.server_key}"\n'
            f'  ca_file: "{pki.ca}"\n'
            "  verify: true\n"
            "}\n"
        )
    return text


def render_redis_acl(namespace: str, passwords: dict[str, str]) -> str:
    """deploy/redis/jobsys-acl.conf for `namespace`, each user's placeholder hash
    replaced by the SHA-256 of its password."""
    text = REDIS_ACL.read_text(encoding="utf-8")
    text = _replace(text, f"{SHIPPED_NAMESPACE}-dramatiq", f"{namespace}-dramatiq", REDIS_ACL)
    for user, password in passwords.items():
        digest = "#" + hashlib.sha256(password.encode()).hexdigest()
        pattern = re.compile(rf"^(user {re.escape(user)} on ){re.escape(_NO_PASSWORD)}", re.M)
        text, n = pattern.subn(rf"\g<1>{digest}", text)
        if n != 1:
            raise ServiceError(f"{REDIS_ACL} changed: no placeholder password for {user}")
    return text


class _Server:
    """A server process started by this module."""

    binary: Path
    proc: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL)."""
        if self.proc is not None and self.proc.poll() is None:
            terminate(self.proc.pid, str(self.binary))
            self.proc.wait(10)
        self.proc = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SecureNats(_Server):
    """nats-server with the deployment's account, a worker and a processor user."""

    def __init__(
        self,
        root: Path,
        namespace: str,
        pki: Pki | None = None,
        processor_nkey: str | None = None,
    ) -> None:
        self.root = root
        self.namespace = namespace
        self.pki = pki
        self.processor_nkey = processor_nkey
        self.port = free_port()
        self.binary = Nats().binary(Nats.MACHINE)
        self.passwords = {user: password() for user in PASSWORD_ENV}

    def url(self, user: str | None = None) -> str:
        """The client URL, with `user`'s password (None: no credentials)."""
        scheme = "tls" if self.pki is not None else "nats"
        login = f"{user}:{quote(self.passwords[user], safe='')}@" if user else ""
        return f"{scheme}://{login}{LOCAL_HOST}:{self.port}"

    def start(self) -> SecureNats:
        """Start it and wait for its INFO greeting."""
        self.root.mkdir(parents=True, exist_ok=True)
        config = write_private(
            self.root / "nats.conf",
            render_nats_config(self.namespace, self.root / "js", self.pki, self.processor_nkey),
        )
        env = {**os.environ, **{PASSWORD_ENV[u]: p for u, p in self.passwords.items()}}
        log = (self.root / "nats.log").open("ab")
        self.proc = subprocess.Popen(
            [str(self.binary), "-c", str(config), "-a", LOCAL_HOST, "-p", str(self.port)],
            env=env, stdout=log, stderr=log,
        )  # fmt: skip
        # The greeting (INFO) comes before TLS and login: no credentials needed.
        error = wait_until_up("nats", f"nats://{LOCAL_HOST}:{self.port}", self.proc)
        if error is None:
            return self
        self.stop()
        # Its log says why (a bad config value, a port taken meanwhile).
        tail = log_tail(self.root / "nats.log")
        raise ServiceError(f"secure nats-server did not come up: {error}{tail}")

    def __enter__(self) -> SecureNats:
        return self.start()


class SecureRedis(_Server):
    """redis-server with one user per role (and `default` off); with `pki`, a TLS port too."""

    def __init__(self, root: Path, namespace: str, pki: Pki | None = None) -> None:
        self.root = root
        self.namespace = namespace
        self.pki = pki
        self.port = free_port()
        self.tls_port = free_port() if pki is not None else None
        self.binary = Redis().binary(Redis.MACHINE)
        self.passwords = {user: password() for user in (WORKER, PROCESSOR)}

    def url(self, user: str, tls: bool = False) -> str:
        """The client URL of `user` (rediss:// on the TLS port with `tls`)."""
        password = quote(self.passwords[user], safe="")
        if tls:
            return f"rediss://{user}:{password}@{LOCAL_HOST}:{self.tls_port}/0"
        return f"redis://{user}:{password}@{LOCAL_HOST}:{self.port}/0"

    def start(self) -> SecureRedis:
        """Start it and wait until the worker user can ping it."""
        self.root.mkdir(parents=True, exist_ok=True)
        acl = write_private(
            self.root / "jobsys-acl.conf", render_redis_acl(self.namespace, self.passwords)
        )
        cmd = [
            str(self.binary), "--bind", LOCAL_HOST, "--port", str(self.port),
            "--dir", str(self.root), "--save", "", "--appendonly", "no",
            "--include", str(acl),
        ]  # fmt: skip
        if self.pki is not None:
            cmd += [
                "--tls-port", str(self.tls_port),
                "--tls-cert-file", str(self.pki.server_cert),
                "--tls-key-file", str(self.pki.server_key),
                "--tls-ca-cert-file", str(self.pki.ca),
                "--tls-auth-clients", "optional",
            ]  # fmt: skip
        log = (self.root / "redis.log").open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        error = wait_until_up("redis", self.url(WORKER), self.proc)
        if error is not None:
            self.stop()
            raise ServiceError(f"secure redis-server did not come up: {error}")
        return self

    def __enter__(self) -> SecureRedis:
        return self.start()
