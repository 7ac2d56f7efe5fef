"""Handlers of `tasks_exhausted`, `idle_lost` and `waiting`: when pending tasks are
lost, and when they are only waiting.

A task is marked `lost` only when NATS will never deliver it again: its
message exhausted `max_deliver` (the MAX_DELIVERIES advisory names it), or
the job has been idle for `lost_after_s` with nothing left in NATS to offer
or hold, in the stream its tasks were published to. Marking lost and the
results racing it are settled by the ledger's `status = 'pending'` guard:
each task is counted once, by whichever commits first.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from jobsys.lifecycle.blocked import WAITING_FOR_RETRY, blocked_reason, waits_for_retry
from jobsys.lifecycle.finalize import finishing
from jobsys.lifecycle.states import Status
from jobsys.nats.bridge import bridge
from jobsys.nats.subjects import JobNames, parse_msg_id
from jobsys.pg.db import Conn, connection
from jobsys.pg.locks import Lock, job_lock, keep_locks, keep_within_s
from jobsys.pg.queries import Q
from jobsys.reconciler.diagnose import diagnose
from jobsys.reconciler.findings import Handled
from jobsys.reconciler.kinds import Action, Kind
from jobsys.reconciler.observe import NATS_TIMEOUT_S, look_at_job, read_job
from jobsys.reconciler.state import Seen, Thresholds

log = logging.getLogger(__name__)

# Advisories handled per job per pass (the rest wait for the next pass).
MAX_ADVISORIES_PER_PASS = 5_000
# How long a pass reads one job's advisories (two lookups each) before it
# counts those it has: well within NATS_TIMEOUT_S, so a backlog too long to
# read at once (18,000 in a chaos run, under load) is counted in parts
# instead of timing the whole read out pass after pass.
READ_BUDGET_S = 20.0


def mark_lost(
    conn: Conn,
    job_id: int,
    task_nos: list[int] | None,
    reason: str,
    deliveries: list[int] | None = None,
) -> int:
    """Move pending tasks (the given ones, or all) to lost and count them; in the
    caller's transaction. Returns how many really moved: a task a result already
    moved is neither moved nor counted again. `deliveries` (one per task of
    `task_nos`) is how many times NATS delivered each; the ledger records it."""
    params = {"job_id": job_id, "task_nos": task_nos, "reason": reason, "deliveries": deliveries}
    row = conn.execute(Q.mark_tasks_lost, params).fetchone()
    return int(row["moved"]) if row else 0


def lose_tasks(
    job_id: int, task_nos: list[int] | None, reason: str, deliveries: list[int] | None = None
) -> tuple[int, Status | None]:
    """Mark tasks lost and finish the job if that accounts for its last task, in one
    transaction."""
    with connection() as conn, finishing(conn) as fin:
        moved = mark_lost(conn, job_id, task_nos, reason, deliveries)
        final = fin.finish(job_id, f"reconcile: {reason}")
    return moved, final


@dataclass
class Exhausted:
    """What a job's MAX_DELIVERIES advisories say."""

    task_nos: list[int] = field(default_factory=list)
    # How many times NATS delivered each of `task_nos` (the advisory's count).
    deliveries: list[int] = field(default_factory=list)
    # Stream sequences to delete once counted: the advisories and the exhausted task messages.
    done_with: list[int] = field(default_factory=list)


async def read_exhausted(
    js: JetStreamContext,
    job_id: int,
    names: JobNames,
    limit: int = MAX_ADVISORIES_PER_PASS,
    budget_s: float = READ_BUDGET_S,
) -> Exhausted:
    """Tasks whose message exhausted max_deliver, from the advisories in the job's stream:
    at most `limit`, and those read within `budget_s` (at least one).

    An advisory whose task message is gone (acked late, so its result was
    committed) names no task. A lookup that fails after some advisories were
    read ends the read with those (the rest wait for the next pass); one
    that fails first is raised.
    """
    out = Exhausted()
    seq = 1
    until = time.monotonic() + budget_s
    while len(out.task_nos) < limit and (not out.done_with or time.monotonic() < until):
        try:
            found = await _next_advisory(js, names, seq)
        except Exception as exc:
            if not out.done_with:
                raise
            log.warning("advisories read in part", extra={"job_id": job_id, "error": repr(exc),
                                                          "read": len(out.done_with)})  # fmt: skip
            break
        if found is None:
            break
        adv_seq, delivered, task_msg = found
        seq = adv_seq + 1
        out.done_with.append(adv_seq)
        if task_msg is None:
            continue
        ids = parse_msg_id((task_msg.headers or {}).get("Nats-Msg-Id"))
        if ids is not None and ids[0] == job_id:
            out.task_nos.append(ids[1])
            out.deliveries.append(delivered)
            assert task_msg.seq is not None
            out.done_with.append(task_msg.seq)
    return out


async def _next_advisory(
    js: JetStreamContext, names: JobNames, seq: int
) -> tuple[int, int, RawStreamMsg | None] | None:
    """The job's first advisory from `seq` on: its sequence, the deliveries it
    counts, and the task message it names (None if gone or unreadable); None
    when there is no advisory left."""
    try:
        adv = await js.get_msg(names.stream, seq, subject=names.max_deliveries, next=True)
    except NotFoundError:
        return None
    assert adv.seq is not None
    try:
        advisory = json.loads(adv.data or b"{}")
        stream_seq = int(advisory["stream_seq"])
        delivered = int(advisory.get("deliveries") or 0)
        return adv.seq, delivered, await js.get_msg(names.stream, stream_seq)
    except (NotFoundError, KeyError, ValueError, TypeError, AttributeError):
        return adv.seq, 0, None


async def _delete_msgs(js: JetStreamContext, stream: str, seqs: list[int]) -> None:
    for seq in seqs:
        try:
            await js.delete_msg(stream, seq)
        except Exception:
            # Left for the next pass, which finds them already counted.
            log.debug("message not deleted", extra={"stream": stream, "seq": seq})


def tasks_exhausted(seen: Seen) -> Handled:
    """MAX_DELIVERIES advisories: the tasks they name are lost; finalize if complete."""
    names, job_id = seen.names, seen.job_id
    # Within the time the pass may go without touching the job's lock (the
    # read runs on the bridge's thread, which holds no lock to touch).
    budget_s = min(READ_BUDGET_S, keep_within_s())
    exhausted = bridge().run(
        lambda nc, js: read_exhausted(js, job_id, names, MAX_ADVISORIES_PER_PASS, budget_s),
        timeout=NATS_TIMEOUT_S,
    )
    keep_locks()
    task_nos, seqs = exhausted.task_nos, exhausted.done_with
    moved, final = 0, None
    if task_nos:
        moved, final = lose_tasks(
            job_id, task_nos, "delivered max_deliver times", exhausted.deliveries
        )
    # Only after the commit: if we die before, the next pass reads them again.
    if seqs:
        bridge().run(lambda nc, js: _delete_msgs(js, names.stream, seqs), timeout=NATS_TIMEOUT_S)
    action = Action.MARKED_LOST if moved else Action.NONE
    return Handled(action, {"advised": len(task_nos), "moved": moved}, finalized=final)


def idle_lost(seen: Seen) -> Handled:
    """Idle past lost_after_s and NATS has nothing to deliver: every pending task is lost.

    Under the job's bootstrap lock, and only if a fresh look still says so: a
    bootstrap or stream repair (re)publishing the job's tasks right now, or
    one that finished since the pass looked, means they are not lost.
    """
    with job_lock(Lock.BOOTSTRAP, seen.job_id) as held:
        if not held:
            return Handled(Action.NONE, {"reason": "a bootstrap or stream repair is running"})
        job = read_job(seen.job_id)
        nats = look_at_job(seen.settings.namespace, seen.job_id) if job is not None else None
        if job is None or Kind.IDLE_LOST not in diagnose(job, nats, Thresholds.of(seen.settings)):
            return Handled(Action.NONE, {"reason": "no longer idle with nothing to deliver"})
        moved, final = lose_tasks(seen.job_id, None, "idle with nothing left for NATS to deliver")
    return Handled(Action.MARKED_LOST if moved else Action.NONE, {"moved": moved}, finalized=final)


def waiting(seen: Seen) -> Handled:
    """Idle, but NATS still offers or holds messages: nothing is lost; say why it waits.

    Messages held by a consumer say a processor works on it. Otherwise what the
    processors and workers announce is said: a job no processor runs, or whose
    pipeline they refuse, says so (jobsys.lifecycle.blocked).
    The reason names no number (the detail has it): a job waiting for hours
    while the count moves stays one finding, counted (findings.py).
    """
    nats = seen.nats
    held = (nats.num_ack_pending or 0) if nats is not None else 0
    team = seen.team.members()
    at = seen.team.at
    blocked = blocked_reason(seen.job_id, Status.STARTED, team, at) if team is not None else None
    serving = [m for m in team or [] if m.alive(at) and seen.job_id in m.jobs]
    if held > 0 and waits_for_retry(seen.job_id):
        # A nak'ed task waiting for its delay is held by NATS too: say which.
        reason = WAITING_FOR_RETRY
    elif held > 0:
        # NATS's own word that something consumes: it wins over announcements
        # (a processor may run without announcing, e.g. an older version).
        reason = "processors hold messages: running, or results not yet recorded"
    elif blocked is not None:
        reason = blocked
    elif nats is not None and (nats.num_pending or 0) > 0 and not nats.num_waiting:
        reason = (
            "served, but no processor is pulling now" if serving else "no processor is consuming"
        )
    else:
        reason = "waiting for processors"
    return Handled(Action.NONE, {"reason": reason, "held": held, "serving": len(serving)})
