"""Start a whole jobsys system (workers, processors, scheduler) as real subprocesses.

Used by `jobsys demo`, the tests, the benchmarks and the chaos suite, so each
of them runs exactly the commands a Procfile runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from jobsys.errors import JobsysError


def worker_cmd(threads: int = 8) -> list[str]:
    """The command of one Dramatiq worker process (no supervisor)."""
    return [
        sys.executable,
        "-m",
        "jobsys.cli",
        "worker",
        "--processes",
        "1",
        "--threads",
        str(threads),
    ]


def processor_cmd(
    concurrency: int = 8, batch_size: int | None = None, pool: str | None = None
) -> list[str]:
    """The command of one processor."""
    cmd = [sys.executable, "-m", "jobsys.cli", "process", "--concurrency", str(concurrency)]
    if batch_size:
        cmd += ["--batch-size", str(batch_size)]
    if pool:
        cmd += ["--pool", pool]
    return cmd


def serve_cmd(port: int, host: str = "127.0.0.1", *extra: str) -> list[str]:
    """The command of the HTTP API server (`jobsys serve`); `extra`: more of its options."""
    return [sys.executable, "-m", "jobsys.cli", "serve", "--host", host, "--port", str(port),
            *extra]  # fmt: skip


def scheduler_cmd() -> list[str]:
    """The command of the reconcile scheduler."""
    return [sys.executable, "-m", "jobsys.cli", "scheduler"]


class LocalSystem:
    """Workers, processors and optionally a scheduler as child processes, logs in `log_dir`."""

    def __init__(
        self,
        workers: int = 1,
        threads: int = 8,
        processors: int = 1,
        concurrency: int = 8,
        batch_size: int | None = None,
        log_dir: Path | None = None,
        env: dict[str, str] | None = None,
        schedulers: int = 0,
        pool: str | None = None,
    ) -> None:
        self.log_dir = log_dir or Path(".services") / "logs"
        self.env = {**os.environ, **(env or {})}
        self.worker_cmd = worker_cmd(threads)
        self.processor_cmd = processor_cmd(concurrency, batch_size, pool)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.processors: list[subprocess.Popen[bytes]] = []
        self.schedulers: list[subprocess.Popen[bytes]] = []
        self._n_workers = workers
        self._n_processors = processors
        self._n_schedulers = schedulers
        self._spawned = 0
        # Processes of other kinds (`jobsys serve`, remote processors), by kind.
        self._extra: dict[str, tuple[list[str], dict[str, str], list[subprocess.Popen[bytes]]]] = {}

    def _spawn(
        self, cmd: list[str], kind: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._spawned += 1
        log_path = self.log_dir / f"{kind}-{self._spawned}.log"
        with log_path.open("ab") as out:
            return subprocess.Popen(cmd, env=env or self.env, stdout=out, stderr=subprocess.STDOUT)

    def add_group(
        self, kind: str, cmd: list[str], count: int = 1, env: dict[str, str] | None = None
    ) -> list[subprocess.Popen[bytes]]:
        """Start `count` processes of another kind (e.g. `jobsys serve`, or remote
        processors with an environment of their own); they are listed by `groups`,
        restarted like the others and stopped with them."""
        procs: list[subprocess.Popen[bytes]] = []
        self._extra[kind] = (cmd, env or self.env, procs)
        for _ in range(count):
            self._start_extra(kind)
        return procs

    def _start_extra(self, kind: str) -> subprocess.Popen[bytes]:
        cmd, env, procs = self._extra[kind]
        proc = self._spawn(cmd, kind, env)
        procs.append(proc)
        return proc

    def start_worker(self) -> subprocess.Popen[bytes]:
        """Start one more worker process."""
        proc = self._spawn(self.worker_cmd, "worker")
        self.workers.append(proc)
        return proc

    def start_processor(self) -> subprocess.Popen[bytes]:
        """Start one more processor."""
        proc = self._spawn(self.processor_cmd, "processor")
        self.processors.append(proc)
        return proc

    def start_scheduler(self) -> subprocess.Popen[bytes]:
        """Start one more scheduler."""
        proc = self._spawn(scheduler_cmd(), "scheduler")
        self.schedulers.append(proc)
        return proc

    def groups(self) -> list[tuple[str, list[subprocess.Popen[bytes]], Callable[[], object]]]:
        """(kind, running processes, start one more) for each kind of process."""
        return [
            ("worker", self.workers, self.start_worker),
            ("processor", self.processors, self.start_processor),
            ("scheduler", self.schedulers, self.start_scheduler),
            *(
                (kind, procs, lambda kind=kind: self._start_extra(kind))
                for kind, (_, _, procs) in self._extra.items()
            ),
        ]

    def start(self) -> LocalSystem:
        """Start the configured numbers of workers, processors and schedulers."""
        for _ in range(self._n_workers):
            self.start_worker()
        for _ in range(self._n_processors):
            self.start_processor()
        for _ in range(self._n_schedulers):
            self.start_scheduler()
        return self

    def check_alive(self) -> None:
        """Raise if a child exited on its own (its log says why)."""
        for kind, procs, _ in self.groups():
            for p in procs:
                code = p.poll()
                if code is not None:
                    raise JobsysError(
                        f"a {kind} exited with code {code}; see its log in {self.log_dir}/"
                    )

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM everything (graceful), SIGKILL what is still running after `timeout`."""
        procs = [p for _, group, _ in self.groups() for p in group if p.poll() is None]
        for p in procs:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        try:
            for p in procs:
                try:
                    p.wait(max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        finally:
            # Interrupted while waiting (a second Ctrl-C): none is left
            # running behind us. A processor left so served a bench's 10,000
            # jobs for an hour and made its presence bucket again and again.
            for p in procs:
                if p.poll() is None:
                    p.kill()

    def __enter__(self) -> LocalSystem:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
