"""The NATS wire format of jobsys: every name, subject, header and reply, parsed here once.

Pure functions over text: nothing here talks to a server (the recording path
imports this module and no other NATS code).

Per job ``J`` of namespace ``NS`` (`JobNames`)::

    stream     NS_job_J            work-queue retention: what it holds is what is unacked
    subject    NS.tasks.J          one message per task
    consumer   NS_job_J_workers    durable, pull, explicit ack, max_deliver of the job
    advisory   $JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.NS_job_J.NS_job_J_workers
               (captured by the job's own stream: the reconciler reads exhausted tasks there)

A task message::

    header     Nats-Msg-Id: J:T    T = task number; deduplicates republishing
    payload    the item's JSON text, byte for byte as submitted

The reply subject of a delivered message (its ack subject), in the two forms
servers write::

    $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts ns>.<pending>
    $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<stream seq>
           .<consumer seq>.<ts ns>.<pending>[.<token>]

Publishing to it ``+ACK`` (done), ``-NAK`` (deliver again, optionally
``-NAK {"delay": ns}``), ``+WPI`` (still working: restart ack_wait) or
``+TERM`` (never again) settles the message. The stream sequence is where the
message sits: a result counts only for the task whose message sits there
(jobsys.recording).

A pull request is published to ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>``
with ``{"batch": n, "expires": ns}`` and an inbox as reply; the server answers
with messages, or a message with a ``Status`` header (404 nothing there, 408
expired, 409 consumer gone or a limit) that ends the request.

What processors and gateways hear of job streams: jobsys's own notices on
core NATS, ``NS.jobs.<CREATED|UPDATED|DELETED>.<stream>``, published once a
job's stream and consumer are made (with the terms a processor serves it
by, jobsys.nats.notices), its share rewritten, or it is deleted (both
empty). They are in the namespace's subjects, so a processor hears of its
own deployment's jobs only (JetStream's advisories, which it heard before,
cover every stream of the account). A notice is a hint: a processor also
lists the namespace's streams now and then, which catches one lost.

A result batch names the sender's inbox subject for it, ``<prefix>.<serial>``:
the worker publishes there (empty) once the batch is recorded and acked, and
on ``<prefix>.<serial>.again`` when it could not record it (send it again; a
processor that does not know this subject does not hear it).
"""

from __future__ import annotations

from dataclasses import dataclass

# The header a pull request's status answer carries (404, 408, 409).
STATUS_HEADER = "Status"
MSG_ID_HEADER = "Nats-Msg-Id"
# Subject prefix of a consumer's "next messages" API (pull requests).
PULL_PREFIX = "$JS.API.CONSUMER.MSG.NEXT"
# The events of a job stream a notice says (see the module's docstring).
JOB_EVENTS = frozenset({"CREATED", "UPDATED", "DELETED"})


@dataclass(frozen=True)
class JobNames:
    """NATS names of one job's resources."""

    stream: str
    subject: str
    consumer: str
    namespace: str

    @classmethod
    def of(cls, namespace: str, job_id: int) -> JobNames:
        """The names for `job_id` in `namespace`."""
        return cls(
            stream=f"{namespace}_job_{job_id}",
            subject=f"{namespace}.tasks.{job_id}",
            consumer=f"{namespace}_job_{job_id}_workers",
            namespace=namespace,
        )

    def notice(self, event: str) -> str:
        """The subject of the notice that the job's stream was `event` (JOB_EVENTS)."""
        return f"{self.namespace}.jobs.{event}.{self.stream}"

    @property
    def max_deliveries(self) -> str:
        """The subject of JetStream's advisory that a task message exhausted max_deliver."""
        return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.stream}.{self.consumer}"

    @property
    def pull(self) -> str:
        """The subject a pull request for the job's consumer is published to."""
        return f"{PULL_PREFIX}.{self.stream}.{self.consumer}"


def stream_prefix(namespace: str) -> str:
    """Every job stream of a namespace starts with this."""
    return f"{namespace}_job_"


def tasks_wildcard(namespace: str) -> str:
    """Matches the task subject of every job of a namespace (and no other's): a
    stream listing filtered by it holds only the namespace's job streams."""
    return f"{namespace}.tasks.>"


def job_id_of_stream(namespace: str, stream: str) -> int | None:
    """The job id a stream of `namespace` belongs to, or None if not one of ours."""
    prefix = stream_prefix(namespace)
    rest = stream[len(prefix) :] if stream.startswith(prefix) else ""
    return int(rest) if rest.isdigit() else None


def msg_id(job_id: int, task_no: int) -> str:
    """The Nats-Msg-Id of a task message (deduplicates republishing)."""
    return f"{job_id}:{task_no}"


def parse_msg_id(value: str | None) -> tuple[int, int] | None:
    """(job_id, task_no) from a Nats-Msg-Id header, or None if malformed."""
    if not value:
        return None
    job, sep, task = value.partition(":")
    if not sep or not job.isdigit() or not task.isdigit():
        return None
    return int(job), int(task)


@dataclass(frozen=True, slots=True)
class AckSubject:
    """What a JetStream reply (ack) subject says about its message."""

    stream: str
    consumer: str
    delivered: int  # how many times the server has delivered it, this one included
    stream_seq: int  # where the message sits in the stream
    delivered_at_ns: int | None  # when the server delivered it (ns since the epoch)


def _ack_tokens(reply: str) -> tuple[list[str], int] | None:
    """The tokens of an ack subject of either form and where its stream token is;
    None if `reply` is not one (its delivery count and stream sequence numbers)."""
    tokens = reply.split(".")
    n = len(tokens)
    if n < 9 or tokens[0] != "$JS" or tokens[1] != "ACK":
        return None
    if n == 9:
        first = 2
    elif n >= 11:
        first = 4
    else:
        return None
    if not tokens[first + 2].isdigit() or not tokens[first + 3].isdigit():
        return None
    return tokens, first


def parse_ack_subject(reply: str) -> AckSubject | None:
    """Parse a reply subject of either form (see the module's docstring); None if it
    is not one."""
    found = _ack_tokens(reply)
    if found is None:
        return None
    tokens, first = found
    stream, consumer, delivered, sseq = tokens[first : first + 4]
    ts = tokens[first + 5]
    return AckSubject(
        stream, consumer, int(delivered), int(sseq), int(ts) if ts.isdigit() else None
    )


def delivered_at_ns(reply: str) -> int | None:
    """``parse_ack_subject(reply).delivered_at_ns`` (None if `reply` is not an ack
    subject or has no time), without building the whole parse: the worker asks
    it of every result it acks (jobsys.nats.acks), where the full parse was ~3%
    of its CPU."""
    found = _ack_tokens(reply)
    if found is None:
        return None
    tokens, first = found
    ts = tokens[first + 5]
    return int(ts) if ts.isdigit() else None


def job_notices(namespace: str) -> str:
    """The wildcard of every job stream notice of `namespace` (and no other's)."""
    return f"{namespace}.jobs.*.*"


def parse_job_notice(namespace: str, subject: str) -> tuple[str, int] | None:
    """(event, job id) of a job stream notice of `namespace` (see the module's
    docstring); None if the subject is not one."""
    head = f"{namespace}.jobs."
    if not subject.startswith(head):
        return None
    event, dot, stream = subject[len(head) :].partition(".")
    job_id = job_id_of_stream(namespace, stream)
    if not dot or event not in JOB_EVENTS or job_id is None:
        return None
    return event, job_id


def confirm_subject(prefix: str, serial: int) -> str:
    """The inbox subject a worker answers on when it recorded batch `serial`."""
    return f"{prefix}.{serial}"


def serial_of_confirm(subject: str) -> int | None:
    """The batch serial of a confirmation subject, or None."""
    tail = subject.rsplit(".", 1)[-1]
    return int(tail) if tail.isdigit() else None


# The last token of "not recorded, send it again" (see the module's docstring).
AGAIN = "again"


def again_subject(notify: str) -> str:
    """Where a worker asks the sender of a batch (inbox `notify`) to send it again."""
    return f"{notify}.{AGAIN}"


def serial_of_again(subject: str) -> int | None:
    """The batch serial of a "send it again" subject, or None."""
    head, _, last = subject.rpartition(".")
    return serial_of_confirm(head) if last == AGAIN else None


def leases_taken_subject(namespace: str) -> str:
    """Where a `jobsys serve` process says it took over task leases another process of
    the namespace granted (jobsys.server.gateway): the other lets go of them."""
    return f"{namespace}.gateway.taken"
