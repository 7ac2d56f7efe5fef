"""The job mix: what each chaos job's tasks ask the `fault-echo` pipeline to do, and
what each task must end as.

Every job is `fault-echo` (jobsys.testing.faults; the run sets
JOBSYS_FAULT_PIPELINES) and
holds, besides plain tasks (`sleep_ms` 0-5 ms), tasks that fail
permanently, tasks that raise an exception the pipeline gives up on
(`give_up`: a ValueError, failed at its first delivery), tasks that fail
transiently half the time (delivered again after a backoff), and at least
one task of each hard-to-store kind (`odd`: a NaN or Infinity result, a NUL
in the error text, an error far over the storable length). Jobs take turns
through five profiles:

| profile | max_deliver | task time limit | retry delay | rate | special tasks |
|---|---|---|---|---|---|
| plain | 20 | default | 0.1 s doubling to 1 s | -- | -- |
| poison | 3 | default | run's | -- | one task per crash kind: SIGKILL, `os._exit(3)`, a segfault |
| hung | 3 | 2 s | run's | -- | two tasks that never return |
| small | 2 | default | run's | -- | -- (a small max_deliver: a recorder outage bites) |
| limited | 5 | default | run's | 200/s | -- (a rate-limited job beside the others) |

Every job gets a priority and a weight drawn from PRIORITIES and WEIGHTS,
and a share of the mix's jobs has them changed mid-run (`jobsys set`,
RESHARE_P): slots are then shared unevenly, and some jobs wait behind
higher priorities, while every invariant must still hold.

Beside each of those jobs, TINY_PER_JOB tiny jobs of 1-3 tasks (profile
`tiny`, plain's settings): many small jobs, and a churn of their streams.

A task's kind (`plain`, `fail`, `give_up`, `transient`, an `odd` kind, a
crash kind, `hang`) says how it must end (`judge`). The job mix draws from its own
random stream, so a seed gives the same jobs however the faults fall.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import jobsys
from jobsys.storable import MAX_ERROR_CHARS
from jobsys.testing.faults import CRASH_KINDS, GIVE_UP_TEXT, LONG_ERROR_CHARS, ODD_KINDS

PLAIN_MAX_DELIVER = 20
# Jobs with at most this max_deliver are the ones a recorder outage could exhaust.
SMALL_MAX_DELIVER = 3
HUNG_TIMEOUT_S = 2.0
# profile -> (max_deliver, task_timeout_s or None for the default)
PROFILES: dict[str, tuple[int, float | None]] = {
    "plain": (PLAIN_MAX_DELIVER, None),
    "poison": (3, None),
    "hung": (3, HUNG_TIMEOUT_S),
    "small": (2, None),
    "limited": (5, None),
}
# Per profile: its jobs' retry delay (`--retry-delay`) and rate limit (`--rate`).
RETRY_DELAYS: dict[str, str] = {"plain": "0.1,1"}
RATES: dict[str, str] = {"limited": "200/s"}
PROFILE_ORDER = tuple(PROFILES)
# Besides each job of the turns above, this many tiny jobs (1-3 tasks, the
# plain profile's tasks): many small jobs at once, and their streams made
# and deleted all the time (a churn of short jobs' streams).
TINY_PER_JOB = 3
TINY_TASKS = (1, 3)
HUNG_PER_JOB = 2
# Kinds a task can ask for that the chaos report counts as faults of the mix.
MIX_KINDS = (*ODD_KINDS, *CRASH_KINDS, "hang")
# Kinds that run their pipeline to a result (done, or a permanent failure) on
# the first delivery; the others may use up deliveries by themselves.
RETURNS_AT_ONCE = {"plain", "fail", "give_up", *ODD_KINDS}
# A share of the jobs is cancelled at a random moment; never the first of each
# profile, so every kind of task has its outcome checked in every run.
CANCEL_P = 0.2

# A job's share of the processors' slots, drawn per job (tiny ones too), and
# the share of the mix's jobs whose share is changed while they run.
PRIORITIES = (-1, 0, 0, 0, 1)
WEIGHTS = (1, 1, 2, 5)
RESHARE_P = 0.3

FAIL_TEXT = "payload asked to fail"
GIVE_UP_ERROR = f"ValueError: {GIVE_UP_TEXT}"
DEATH = {
    "kill": "execution process killed by signal 9 (SIGKILL)",
    "exit": "execution process exited with code 3",
    "segfault": "execution process killed by signal 11 (SIGSEGV)",
}
CUT_MARK = f"[cut: {LONG_ERROR_CHARS:,} characters in all]"


@dataclass
class JobPlan:
    """A submitted job and what its tasks were asked to do."""

    job_id: int
    total: int
    profile: str
    max_deliver: int
    task_timeout_s: float | None
    special: dict[int, str]  # task_no -> kind, for every task that is not plain
    submitted_at: float  # wall clock (compared with Postgres timestamps)
    cancel_at: float | None  # monotonic
    cancelled: bool = False
    kinds: dict[str, int] = field(default_factory=dict)
    # The bad receiver its completion hook goes to (tests.chaos.hooks), if any.
    hook: str | None = None
    # Its share as asked at submit (and changed by `reshare`, if that won).
    priority: int = 0
    weight: int = 1
    # When (monotonic) its share is changed mid-run, and to what; None: never.
    reshare_at: float | None = None
    reshare_to: tuple[int, int] = (0, 1)
    reshared: bool = False

    def kind_of(self, task_no: int) -> str:
        """What task `task_no` was asked to do."""
        return self.special.get(task_no, "plain")


def _payloads(rng: random.Random, n: int, profile: str) -> tuple[list[str], dict[int, str]]:
    """The items of one job and the kind of each task that is not plain."""
    special: dict[int, str] = {}
    wanted = [kind for kind in ODD_KINDS for _ in range(rng.choice([1, 2]))]
    if profile == "poison":
        wanted += list(CRASH_KINDS)
    if profile == "hung":
        wanted += ["hang"] * HUNG_PER_JOB
    for task_no, asked in zip(rng.sample(range(n), min(n, len(wanted))), wanted, strict=False):
        special[task_no] = asked
    fail_p = rng.choice([0.0, 0.02, 0.1])
    lines = []
    for i in range(n):
        item: dict[str, Any] = {"n": i, "sleep_ms": rng.choice([0, 1, 2, 5])}
        kind = special.get(i)
        if kind in ODD_KINDS:
            item["odd"] = kind
        elif kind in CRASH_KINDS:
            item["crash"] = kind
        elif kind == "hang":
            item["hang"] = True
        elif rng.random() < fail_p:
            item["fail"] = True
            special[i] = "fail"
        elif rng.random() < 0.02:
            item["give_up"] = True
            special[i] = "give_up"
        elif rng.random() < 0.05:
            item["transient_p"] = 0.5
            special[i] = "transient"
        lines.append(json.dumps(item))
    return lines, special


def submit_job(
    rng: random.Random,
    j: int,
    tasks: int,
    now: float,
    seconds: float,
    hook: tuple[str, str] | None = None,
) -> JobPlan:
    """Submit the `j`-th job of the run (profile by turn), with `hook` = (URL, kind) as
    its completion hook if given, and return its plan."""
    profile = PROFILE_ORDER[j % len(PROFILE_ORDER)]
    max_deliver, timeout = PROFILES[profile]
    lines, special = _payloads(rng, tasks, profile)
    priority, weight = rng.choice(PRIORITIES), rng.choice(WEIGHTS)
    job = jobsys.submit(
        "fault-echo",
        iter(lines),
        name=f"chaos {j} {profile}",
        failure_threshold=0.5,
        max_deliver=max_deliver,
        task_timeout_s=timeout,
        retry_delay=RETRY_DELAYS.get(profile),
        rate=RATES.get(profile),
        on_complete=hook[0] if hook else None,
        priority=priority,
        weight=weight,
    )
    reshare_at = now + rng.uniform(0.5, seconds * 0.5) if rng.random() < RESHARE_P else None
    reshare_to = (rng.choice(PRIORITIES), rng.choice(WEIGHTS))
    cancellable = j >= len(PROFILE_ORDER)
    cancel_at = (
        now + rng.uniform(0.5, seconds * 0.3) if cancellable and rng.random() < CANCEL_P else None
    )
    kinds: dict[str, int] = {}
    for kind in special.values():
        kinds[kind] = kinds.get(kind, 0) + 1
    return JobPlan(
        job.id, tasks, profile, max_deliver, timeout, special, time.time(), cancel_at,
        kinds=kinds, hook=hook[1] if hook else None, priority=priority, weight=weight,
        reshare_at=reshare_at, reshare_to=reshare_to,
    )  # fmt: skip


def submit_tiny(rng: random.Random, j: int, now: float) -> JobPlan:
    """Submit a tiny job (profile `tiny`: 1-3 tasks, plain's max_deliver) and return
    its plan; it is never cancelled."""
    n = rng.randint(*TINY_TASKS)
    max_deliver, timeout = PROFILES["plain"]
    lines, special = _payloads(rng, n, "plain")
    priority, weight = rng.choice(PRIORITIES), rng.choice(WEIGHTS)
    job = jobsys.submit("fault-echo", iter(lines), name=f"chaos {j} tiny",
                        failure_threshold=0.5, max_deliver=max_deliver,
                        priority=priority, weight=weight)  # fmt: skip
    kinds: dict[str, int] = {}
    for kind in special.values():
        kinds[kind] = kinds.get(kind, 0) + 1
    return JobPlan(job.id, n, "tiny", max_deliver, timeout, special, time.time(), None,
                   kinds=kinds, priority=priority, weight=weight)  # fmt: skip


def reshare(plan: JobPlan) -> None:
    """Change the job's share as planned (`jobsys set`); a job already final is
    refused (InvalidInput) and keeps the share it had. A held row (JobBusy)
    is raised, and the change stays due."""
    priority, weight = plan.reshare_to
    try:
        jobsys.set_share(plan.job_id, priority=priority, weight=weight)
    except jobsys.InvalidInput:
        plan.reshare_at = None
        return
    plan.reshare_at = None
    plan.priority, plan.weight = priority, weight
    plan.reshared = True


def judge(plan: JobPlan, kind: str, status: str, error: str | None, deliveries: int) -> bool:
    """Whether a task of `kind` ended as its payload asked (a `lost` end is judged apart)."""
    md = plan.max_deliver
    err = error or ""
    gave_up = status == "failed" and err.startswith("gave up after") and deliveries >= md
    if kind == "plain":
        return status == "done"
    if kind == "fail":
        return status == "failed" and err == FAIL_TEXT
    if kind == "give_up":
        # Failed at once: never "gave up after N deliveries" (a fault may still
        # have cut a delivery before its failure was recorded).
        return status == "failed" and err == GIVE_UP_ERROR
    if kind == "transient":
        # Half its runs fail: it may, rarely, fail all max_deliver of them.
        return status == "done" or (gave_up and "transient failure" in err)
    if kind in ("nan", "inf"):
        return status == "failed" and "not storable as JSON" in err and "NaN or Infinity" in err
    if kind == "nul":
        return status == "failed" and err == "bad\\x00byte"
    if kind == "long_error":
        return status == "failed" and len(err) == MAX_ERROR_CHARS and err.endswith(CUT_MARK)
    if kind in DEATH:
        return gave_up and err.endswith(DEATH[kind])
    if kind == "hang":
        return gave_up and err.endswith(f"timed out after {plan.task_timeout_s:g} s")
    raise ValueError(f"unknown task kind {kind!r}")
