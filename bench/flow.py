"""Whole-system benchmarks (tables 2-5) and their bare-transport baselines.

- end to end: an N-task echo job, submit to final, one worker process and one
  processor (`LocalSystem`), beside the bare transport (the same N messages
  published, fetched and acked, no bookkeeping) in the same run;
- bootstrap: COPY of a large job into the ledger, then `run_bootstrap`
  in-process, beside nats-py's async publish rate;
- memory: VmHWM of the worker and processor after the large job, compared
  with a smaller job's;
- many jobs: concurrent small jobs, total rate and spread of finish times.

Each system run is a fresh `LocalSystem`, so a child's VmHWM is the peak of
that run alone. With `profile=True` py-spy samples the children during the
run (raw collapsed stacks written next to the results).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.env import NAMESPACE, RUN_ID

RESULTS_DIR = Path("bench") / "results"
LOG_DIR = RESULTS_DIR / f"logs-{RUN_ID}"
PYSPY_DIRS = ("/tmp/pyspy/bin",)


# -- helpers -------------------------------------------------------------------


def vm_hwm_kb(pid: int) -> int:
    """Peak resident set size of a process (VmHWM, kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """Direct children of a process (a processor's execution processes and forkserver)."""
    found = []
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = path.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(path.parent.name))
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its live descendants."""
    total = cpu_seconds(pid)
    for child in child_pids(pid):
        with contextlib.suppress(OSError):  # it ended meanwhile
            total += tree_cpu_seconds(child)
    return total


def children_cpu(system: Any) -> dict[str, float]:
    """CPU seconds of the system's first worker and processor (with its execution
    processes: they are forked from its forkserver, so its grandchildren)."""
    return {
        "worker": cpu_seconds(system.workers[0].pid),
        "processor": tree_cpu_seconds(system.processors[0].pid),
    }


def pyspy() -> str | None:
    """The py-spy binary, if installed (PATH or `pip install --target /tmp/pyspy py-spy`)."""
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).parent / "py-spy"  # pip install py-spy into the venv
    if beside.exists():
        return str(beside)
    for d in PYSPY_DIRS:
        p = Path(d) / "py-spy"
        if p.exists():
            return str(p)
    return None


@dataclass
class Profiles:
    """py-spy recorders attached to a system's children."""

    procs: list[tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def stop(self) -> dict[str, Path]:
        out = {}
        for kind, proc, path in self.procs:
            with contextlib.suppress(Exception):
                proc.send_signal(2)  # SIGINT: py-spy writes its output and exits
                proc.wait(20)
            out[kind] = path
        return out


def start_profiles(system: Any, tag: str) -> Profiles:
    """Sample the worker and processor with py-spy (raw collapsed stacks)."""
    exe = pyspy()
    prof = Profiles()
    if exe is None:
        return prof
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    for kind, child in (("worker", system.workers[0]), ("processor", system.processors[0])):
        path = LOG_DIR / f"pyspy-{tag}-{kind}.txt"
        cmd = [
            exe,
            "record",
            "--pid",
            str(child.pid),
            "--format",
            "raw",
            "--rate",
            "200",
            "--nonblocking",
            "--output",
            str(path),
        ]
        # On-CPU samples only (threads holding the GIL): waiting is not work.
        cmd.insert(2, "--gil")
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        prof.procs.append((kind, proc, path))
    return prof


def summarize_profile(path: Path, top: int = 12) -> dict[str, Any]:
    """Top frames by inclusive and by self share of samples from a py-spy raw file."""
    if not path.exists():
        return {"error": f"no profile at {path}"}
    incl: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = stack.split(";")
        leaf[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "self": [(f, round(100 * c / total, 1)) for f, c in leaf.most_common(top)],
        "inclusive": [(f, round(100 * c / total, 1)) for f, c in incl.most_common(top * 3)],
    }


def wait_until_quiet(system: Any, timeout: float = 30.0) -> None:
    """Until the children have started (their CPU time stops growing), so the timed part
    starts warm and their CPU figures hold only the job's work, however loaded the
    machine is."""
    time.sleep(1.0)
    deadline = time.monotonic() + timeout
    last = children_cpu(system)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = children_cpu(system)
        if all(now[k] - last[k] < 0.02 for k in now):
            return
        last = now


@contextlib.contextmanager
def fresh_system(tag: str, concurrency: int = 8) -> Iterator[Any]:
    """One worker process and one processor, started now, stopped on exit."""
    from jobsys.ops.runner import LocalSystem

    system = LocalSystem(workers=1, processors=1, concurrency=concurrency, log_dir=LOG_DIR / tag)
    system.start()
    try:
        wait_until_quiet(system)  # imports, connections, execution processes
        system.check_alive()
        yield system
    finally:
        system.stop()


def _finish(job_id: int, timeout: float) -> Any:
    from jobsys.api.read import wait_until_final

    return wait_until_final(job_id, timeout=timeout, poll_s=0.05)


# -- bare transport ------------------------------------------------------------


async def _bare_async(n: int, payload: bytes, consume: bool) -> dict[str, float]:
    """Publish `n` messages with async publish (as bootstrap does), optionally while
    a pull consumer fetches and acks them. Rates of publish and of the whole."""
    from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

    from jobsys.nats.connect import connect, jetstream

    stream = f"{NAMESPACE}_bare_{int(time.time() * 1000)}"
    subject = f"{NAMESPACE}.bare.{stream}"
    pub_nc, sub_nc = await connect(name="bench-pub"), await connect(name="bench-sub")
    pub_js, sub_js = jetstream(pub_nc), jetstream(sub_nc)
    await pub_js.add_stream(
        StreamConfig(
            name=stream,
            subjects=[subject],
            retention=RetentionPolicy.WORK_QUEUE,
            duplicate_window=600.0,
        )
    )
    await pub_js.add_consumer(
        stream,
        ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=20_000),
    )
    out: dict[str, float] = {}
    start = time.perf_counter()

    async def publish() -> None:
        window = []
        for i in range(n):
            window.append(
                await pub_js.publish_async(subject, payload, headers={"Nats-Msg-Id": f"b:{i}"})
            )
            if len(window) >= 5_000:
                await asyncio.gather(*window)
                window = []
        await asyncio.gather(*window)
        out["publish_s"] = time.perf_counter() - start

    async def consume_all() -> None:
        sub = await sub_js.pull_subscribe_bind(consumer="c", stream=stream)
        got = 0
        while got < n:
            try:
                msgs = await sub.fetch(250, timeout=1)
            except TimeoutError:
                continue
            for m in msgs:
                await m.ack()
            got += len(msgs)
        await sub_nc.flush()

    try:
        if consume:
            await asyncio.gather(publish(), consume_all())
        else:
            await publish()
        out["total_s"] = time.perf_counter() - start
    finally:
        with contextlib.suppress(Exception):
            await pub_js.delete_stream(stream)
        await pub_nc.close()
        await sub_nc.close()
    out["publish_rate"] = n / out["publish_s"]
    out["rate"] = n / out["total_s"]
    return out


def bare_transport(n: int, consume: bool = True) -> dict[str, float]:
    """The bare NATS rate for `n` echo-sized messages (see `_bare_async`)."""
    payload = json.dumps({"i": 123456}).encode()
    cpu0 = time.process_time()
    out = asyncio.run(_bare_async(n, payload, consume))
    out["cpu_s"] = time.process_time() - cpu0
    return out


# -- jobsys runs ---------------------------------------------------------------


def end_to_end(
    n: int, tag: str, profile: bool = False, concurrency: int = 8, pipeline: str = "echo"
) -> dict[str, Any]:
    """Submit an n-task job (echo by default) to a fresh system; time submit -> final;
    peak RSS, CPU (the processor's includes its execution processes)."""
    import jobsys
    from jobsys.api.items import counted_items

    with fresh_system(tag, concurrency) as system:
        prof = start_profiles(system, tag) if profile else None
        cpu0 = children_cpu(system)
        start = time.perf_counter()
        job = jobsys.submit(pipeline, counted_items(n), name=f"bench-{tag}")
        submitted = time.perf_counter()
        final = _finish(job.id, timeout=max(600, n / 500))
        elapsed = time.perf_counter() - start
        cpu1 = children_cpu(system)
        system.check_alive()
        hwm = {
            "worker": vm_hwm_kb(system.workers[0].pid),
            "processor": vm_hwm_kb(system.processors[0].pid),
        }
        profiles = prof.stop() if prof else {}
    return {
        "n": n,
        "status": final.status,
        "cpu_s": {k: cpu1[k] - cpu0[k] for k in cpu0},
        "done": final.done,
        "elapsed": elapsed,
        "submit_s": submitted - start,
        "rate": n / elapsed,
        "hwm_kb": hwm,
        "profiles": {k: str(v) for k, v in profiles.items()},
    }


def bootstrap_and_run(
    n: int, tag: str, profile: bool = False, max_process_s: float | None = None
) -> dict[str, Any]:
    """An n-task job as in production, in two timed phases.

    Submit in-process (the COPY into the ledger, timed). A fresh worker alone
    then bootstraps it: the publish time is the job's `started_at` to the
    `progress_at` of its last `advance_published` (no results arrive yet to
    move `progress_at`). Then the processor starts and the job runs to the
    end, or for at most `max_process_s` (then it is cancelled: on a loaded
    2-core machine a million echo tasks can take longer than the bench may);
    both children's peak RSS covers everything they did with the job.
    """
    import jobsys
    from jobsys.api.items import counted_items
    from jobsys.errors import JobsysError
    from jobsys.lifecycle.states import FINAL
    from jobsys.ops.runner import LocalSystem
    from jobsys.pg.db import connection

    start = time.perf_counter()
    job = jobsys.submit("echo", counted_items(n), name=f"bench-{tag}")
    copy_s = time.perf_counter() - start
    system = LocalSystem(workers=1, processors=0, log_dir=LOG_DIR / tag)
    system.start()
    try:
        deadline = time.monotonic() + max(300, n / 2_000)
        while True:
            with connection() as conn:
                row = conn.execute(
                    "SELECT published_count, total_count, extract(epoch FROM progress_at - "
                    "started_at) AS publish_s FROM jobs WHERE id = %(id)s",
                    {"id": job.id},
                ).fetchone()
            assert row is not None
            if row["published_count"] >= row["total_count"]:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"bootstrap of job {job.id} not done")
            system.check_alive()
            time.sleep(0.2)
        publish_s = float(row["publish_s"])
        system.start_processor()
        prof = start_profiles(system, tag) if profile else None
        start = time.perf_counter()
        limit = max_process_s if max_process_s is not None else max(900, n / 300)
        try:
            final = _finish(job.id, timeout=limit)
        except JobsysError:
            final = jobsys.get_job(job.id)  # still running: the window is what counts
        process_s = time.perf_counter() - start
        processed = final.done + final.failed
        system.check_alive()
        hwm = {
            "worker": vm_hwm_kb(system.workers[0].pid),
            "processor": vm_hwm_kb(system.processors[0].pid),
        }
        profiles = prof.stop() if prof else {}
        if final.status not in FINAL:
            jobsys.cancel(job.id)
    finally:
        system.stop()
    return {
        "n": n,
        "status": final.status,
        "copy_s": copy_s,
        "publish_s": publish_s,
        "publish_rate": n / publish_s,
        "process_s": process_s,
        "processed": processed,
        "process_rate": processed / process_s,
        "hwm_kb": hwm,
        "profiles": {k: str(v) for k, v in profiles.items()},
    }


def many_jobs(jobs: int, size: int) -> dict[str, Any]:
    """`jobs` concurrent `size`-task jobs on one fresh system."""
    import jobsys
    from jobsys.api.items import counted_items
    from jobsys.pg.db import connection

    with fresh_system("many") as system:
        t0 = time.time()
        ids = [jobsys.submit("echo", counted_items(size), name=f"many-{i}").id for i in range(jobs)]
        submitted = time.time() - t0
        for job_id in ids:
            _finish(job_id, timeout=900)
        system.check_alive()
    with connection() as conn:
        rows = conn.execute(
            "SELECT status, extract(epoch FROM finished_at) AS fin FROM jobs "
            "WHERE id = ANY(%(ids)s)",
            {"ids": ids},
        ).fetchall()
    fins = sorted(float(r["fin"]) - t0 for r in rows)
    statuses = Counter(r["status"] for r in rows)
    return {
        "jobs": jobs,
        "size": size,
        "submit_s": submitted,
        "first_finish_s": fins[0],
        "last_finish_s": fins[-1],
        "rate": jobs * size / fins[-1],
        "statuses": dict(statuses),
    }
