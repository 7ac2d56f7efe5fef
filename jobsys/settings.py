"""Every tunable of jobsys, read from ``JOBSYS_*`` environment variables and env files.

Each setting is taken from the first of these that gives it (`env_files`):

1. the environment (``JOBSYS_<FIELD>``);
2. the file named by ``JOBSYS_ENV_FILE`` (it must exist);
3. ``./.jobsys.env`` in the current directory (`make services` writes one);
4. the user's config directory: ``$XDG_CONFIG_HOME/jobsys/env``
   (``~/.config/jobsys/env`` by default);
5. ``/etc/jobsys/env``.

Files are ``KEY=value`` lines (dotenv). `setting_sources` says where each
setting came from (`jobsys doctor` prints it). Defaults are chosen so that a
single machine with the stock services works without any configuration, and
so that crashed processes are recovered in seconds rather than minutes.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

PREFIX = "JOBSYS_"
# The setting naming an env file read before all others (after the environment).
ENV_FILE_SETTING = "JOBSYS_ENV_FILE"
# Read from the current directory: a project's own settings (`make services`
# writes the URLs of its project-local servers and a secret here).
PROJECT_ENV_FILE = Path(".jobsys.env")
# The machine's settings, read last (a deployment's shared values).
SYSTEM_ENV_FILE = Path("/etc/jobsys/env")

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
# A rate: "100/second", "30/minute", "1000/hour".
RATE_PATTERN = r"^[1-9][0-9]{0,8}/(second|minute|hour)$"
# A task rate limit: "20/s", "1.5/s", "600/m", "3600/h" (or a bare number, per second).
_TASK_RATE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(?:/\s*(s|m|h))?\s*$")
_PER_SECOND = {"s": 1.0, "m": 60.0, "h": 3600.0}
# Task rates above this are refused (no limit at all is the way to say "fast").
MAX_TASK_RATE = 1_000_000.0


def parse_task_rate(text: str) -> float:
    """Tasks per second of a rate limit written ``N/s`` (``N/m``, ``N/h``, or a bare
    N per second); ValueError with one line if it is not one."""
    match = _TASK_RATE_RE.match(text)
    if match is None:
        raise ValueError(f"expected a rate like 20/s, 600/m or 3600/h, got {text!r}")
    rate = float(match.group(1)) / _PER_SECOND[match.group(2) or "s"]
    if not 0 < rate <= MAX_TASK_RATE:
        raise ValueError(f"a rate must be above 0 and at most {MAX_TASK_RATE:,.0f}/s: {text!r}")
    return rate


def parse_rate_limits(text: str) -> dict[str, float]:
    """JOBSYS_RATE_LIMITS (``thumb=50/s,geocode=10/s``) as {pipeline: tasks per second}."""
    limits: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, rate = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"expected PIPELINE=RATE, got {part.strip()!r}")
        limits[name.strip()] = parse_task_rate(rate)
    return limits


# An absolute dotted module name (``a``, ``a.b``).
MODULE_NAME_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
# An HTTP header name (RFC 9110 token).
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class Settings(BaseSettings):
    """jobsys configuration; each field is ``JOBSYS_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The env files are looked for now, not when this module was imported
        # (the current directory and JOBSYS_ENV_FILE may have changed).
        # pydantic-settings lets a later file override an earlier one: lowest first.
        files = list(reversed(env_files()))
        return (
            init_settings,
            env_settings,
            DotEnvSettingsSource(settings_cls, env_file=files),
            file_secret_settings,
        )

    # The env file read right after the environment (see the module's docstring).
    env_file: Path | None = None

    database_url: str = "postgresql://postgres@127.0.0.1:5432/jobsys"
    redis_url: str = "redis://127.0.0.1:6379/0"
    nats_url: str = "nats://127.0.0.1:4222"
    namespace: str = Field(
        default="jobsys",
        description="Prefix of NATS streams/consumers and of the Dramatiq Redis namespace.",
    )

    # Credentials and TLS (docs/security.md). A user and password, or a NATS
    # token, go in the URLs (printed only redacted); these settings name
    # files, so no secret sits in an environment listing or on a command line.
    # NATS: a decentralised-auth `.creds` file, or a file holding an nkey seed.
    nats_creds: Path | None = None
    nats_nkey: Path | None = None
    # The CA that signed the NATS server's certificate (tls:// URLs; default:
    # the system's CAs), and a client certificate for servers that verify one.
    nats_tls_ca: Path | None = None
    nats_tls_cert: Path | None = None
    nats_tls_key: Path | None = None
    # The same for Redis (rediss:// URLs).
    redis_tls_ca: Path | None = None
    redis_tls_cert: Path | None = None
    redis_tls_key: Path | None = None

    # NATS consumer behaviour.
    ack_wait_s: float = Field(default=30.0, gt=0)
    max_deliver: int = Field(default=5, ge=1)
    max_ack_pending: int = Field(default=20_000, ge=1)
    # Backoff between deliveries of a task that failed transiently: this many
    # seconds after its first failure, doubling after each, at most
    # retry_delay_max_s, plus up to 25% jitter. A job's own (`jobsys submit
    # --retry-delay`) or its pipeline's (`@pipeline(retry_delay=...)`) wins.
    retry_delay_s: float = Field(default=1.0, ge=0)
    retry_delay_max_s: float = Field(default=300.0, ge=0)
    publish_window: int = Field(default=1_000, ge=1)

    # Processor behaviour.
    # Results per Dramatiq message: the worker's cost per message (decode, one
    # transaction on the job's row, one stream lookup) is spread over this many
    # tasks; a batch goes out when full or after result_flush_ms, whichever
    # comes first. A big job's batches are recorded one after another: 1,000
    # took a 20,000-task job from ~0.75x bare NATS to ~0.9x against 250
    # (docs/bench.md); batches are also sealed by bytes (result_batch_bytes).
    result_batch_size: int = Field(default=1_000, ge=1)
    # ...or when its results (and error texts) come to this many bytes, however
    # few: a batch of big results stays a modest Dramatiq message (and a remote
    # processor's report stays within the server's serve_max_body_bytes).
    result_batch_bytes: int = Field(default=4 * 1024 * 1024, ge=1_024)
    result_flush_ms: int = Field(default=100, ge=1)
    max_result_bytes: int = Field(default=1_000_000, ge=1)
    # Results sent but not yet recorded are held (kept in progress in NATS)
    # until a worker confirms them, however long that takes. One unconfirmed
    # this long is sent again (Redis may have lost it), then after twice as
    # long, and so on up to result_resend_max_s between sends.
    result_resend_s: float = Field(default=30.0, gt=0)
    result_resend_max_s: float = Field(default=600.0, gt=0)
    # A processor holding this many unrecorded results stops fetching while its
    # recorder is behind (up to 2.5 times this while it keeps up: a fast
    # pipeline holds throughput x a batch's round trip; jobsys.processor.outbox).
    # More only means the recorder is slow or down, and a processor killed
    # then loses its hold (those tasks run again).
    max_held_results: int = Field(default=2_000, ge=1)
    # Processors hear of new and deleted job streams by notices; they also list
    # the namespace's job streams this often, which catches a notice lost.
    stream_listing_s: float = Field(default=2.0, gt=0)
    # A task (or batch call) running longer is stopped and counts as a
    # transient failure. Jobs store their own (`jobsys submit --task-timeout`);
    # this is the default for a submit that gives none.
    task_timeout_s: float = Field(default=600.0, gt=0)
    # Rate limits per pipeline, across all processors: "thumb=50/s,geocode=10/s"
    # (a job's own is `jobsys submit --rate`). A limit lets a burst of this
    # many seconds' worth of tasks start at once (at least one task).
    rate_limits: str = ""
    rate_burst_s: float = Field(default=0.25, gt=0, le=60)

    # Dramatiq's Redis broker: recover a killed worker's messages in seconds.
    heartbeat_timeout_ms: int = Field(default=10_000, ge=1_000)
    maintenance_chance: int = Field(default=50_000, ge=0, le=1_000_000)

    # Reconciler thresholds.
    reconcile_every_s: float = Field(default=60.0, gt=0)
    lost_after_s: float = Field(default=120.0, gt=0)
    queued_stale_s: float = Field(default=60.0, gt=0)
    cancel_grace_s: float = Field(default=60.0, gt=0)
    # Tasks a revoke cancels per transaction: a big cancel is many short
    # transactions (counters exact after each), never one long lock.
    cancel_chunk_rows: int = Field(default=10_000, ge=1, le=1_000_000)
    # How long a write a person waits on (cancel, set) waits for a job's row
    # another session holds before it gives up and names the holder
    # (jobsys.pg.waits): a worker frozen mid-transaction holds it for good.
    lock_wait_s: float = Field(default=10.0, gt=0, le=3_600)
    # A session left idle inside a transaction this long is ended by Postgres
    # (jobsys.pg.db): its process is frozen (a paused VM, SIGSTOP, a
    # debugger), and the rows it holds would stall their job for as long.
    # Every such transaction is a few statements with nothing slow between
    # them; what it was writing is retried by its sender. 0: never.
    idle_transaction_s: float = Field(default=60.0, ge=0, le=86_400)
    # A per-job lock's session (jobsys.pg.locks) left idle this long is ended
    # by Postgres, and the lock with it: its holder is stopped (a paused VM,
    # SIGSTOP, a hung call), and the job's bootstrap or repair could never run
    # again. A live holder touches the session between steps (a fill: per
    # chunk, each at most 2 minutes of NATS work), so this must be well over
    # that. 0: never.
    lock_idle_s: float = Field(default=600.0, ge=0, le=86_400)
    # A final job's stream is its teardown's to delete for this long; after
    # that the reconciler deletes it as a stray (a teardown lost with Redis).
    stray_grace_s: float = Field(default=30.0, ge=0)
    # Each pass prunes rate rollups, findings last seen and pass records older than this.
    history_days: float = Field(default=7.0, gt=0)

    # Module prefixes whose ``module:function`` may be a pipeline (or a
    # completion hook's ``module:actor``), comma-separated: ``mypkg`` allows
    # ``mypkg`` and ``mypkg.jobs``, not ``mypkgevil`` (jobsys.pipelines.allow). Empty:
    # only built-ins and entry-point pipelines of installed packages.
    pipeline_modules: str = ""
    # The fault-injecting pipelines `fault-echo` and `fault-echo-batch`
    # (jobsys.testing.faults: crash, hang, odd values on request) may run.
    # For tests and failure drills only.
    fault_pipelines: bool = False

    # Shared secret that signs every message between processes (jobsys.dramatiq.signing);
    # the previous one is still accepted while a rotation rolls out.
    secret: SecretStr | None = None
    secret_previous: SecretStr | None = None

    # Completion hooks (jobsys/hooks/). One attempt = one claim; a failed
    # attempt waits backoff_s x 2^(attempt-1), at most backoff_max_s; after
    # max_attempts the hook is given up (defaults: ~42 minutes of trying).
    hook_max_attempts: int = Field(default=10, ge=1, le=100)
    hook_backoff_s: float = Field(default=5.0, gt=0)
    hook_backoff_max_s: float = Field(default=1_800.0, gt=0)
    # The whole of one HTTP attempt -- connect, send, the answer's status and
    # headers, and (for an error answer) the first KiB of its body -- must fit
    # in this; a receiver that trickles or hangs is cut off here.
    hook_timeout_s: float = Field(default=10.0, gt=0, le=3_600)
    # Deliveries one worker process makes at once (its own threads and its own
    # Dramatiq queue, `hooks`: never those of bootstraps and results).
    hook_concurrency: int = Field(default=4, ge=1, le=256)
    # Headers sent with the hooks of one origin only, as JSON:
    # {"https://hooks.example.com": {"Authorization": "Bearer ..."}}. The way to
    # give a receiver a credential: a secret in the target URL is stored and
    # shown redacted (docs/hooks.md).
    hook_headers: SecretStr | None = None
    # A sender that claimed a delivery and did not mark it within this long
    # died (or stalled): the delivery may be claimed again. Must be well over
    # hook_timeout_s, or a slow but live sender is doubled.
    hook_lease_s: float = Field(default=120.0, gt=0)
    # A pending delivery this overdue lost its message (Redis flushed, a
    # worker killed before sending it): the reconciler sends it again.
    hook_resend_after_s: float = Field(default=60.0, ge=0)

    # Retention (jobsys/retention.py): ledger rows and events of jobs final
    # for longer than this are deleted by the reconciler; the job rows stay.
    retain_days: float = Field(default=30.0, ge=0)

    # The HTTP API (`jobsys serve`, jobsys/server/). Requests per token (and
    # failed logins per client address), as "N/second|minute|hour", counted
    # in each server process. A JSON body, and an NDJSON upload of items, may
    # be at most this many bytes (a bigger one is refused with 413 before or
    # while it is read).
    serve_rate_limit: str = Field(default="100/second", pattern=RATE_PATTERN)
    serve_auth_failures: str = Field(default="30/minute", pattern=RATE_PATTERN)
    serve_max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1_024)
    serve_max_upload_bytes: int = Field(default=1024 * 1024 * 1024, ge=1_024)
    # The web console (jobsys/server/console/): every open page's live
    # counters come from one query this often (per server process), run only
    # while a page is open.
    console_refresh_s: float = Field(default=2.0, ge=0.2, le=300)
    # The task gateway (jobsys/server/gateway.py): a remote processor's lease
    # on the tasks it took lapses this long after its last extend, and they
    # go back to NATS; one lease call takes at most gateway_max_tasks.
    gateway_lease_s: float = Field(default=30.0, ge=1, le=3_600)
    gateway_max_tasks: int = Field(default=1_000, ge=1, le=10_000)
    # Where `jobsys serve` is reached (https://host:port), for `jobsys doctor`;
    # and the CA that signed its certificate when it is not a public one.
    server_url: str | None = None
    server_tls_ca: Path | None = None

    db_pool_size: int = Field(default=8, ge=1)
    # Off behind a transaction-pooling proxy (PgBouncer pool_mode=transaction
    # before 1.21, or without max_prepared_statements): `jobsys doctor` tells.
    db_prepared_statements: bool = True
    # The asyncio code of workers (their NATS client) and processors runs on
    # uvloop where it is installed (jobsys.loops); false: the standard loop.
    uvloop: bool = True
    # Waiters (Job.wait, jobsys watch) LISTEN for jobs going final on a
    # connection of their own. Off behind a transaction-pooling proxy, where a
    # LISTEN stays on whichever server session ran it: waiters then poll.
    db_listen: bool = True
    # Replicas of each job stream (1, 3 or 5 on a JetStream cluster).
    stream_replicas: int = Field(default=1, ge=1, le=5)
    # Where nats-server keeps job streams: "file" (kept across its restarts)
    # or "memory" (no disk and no open files per stream: cheaper per job, but
    # a restart loses them, and the reconciler publishes their pending tasks
    # again from Postgres; see docs/scaling.md). "auto": memory for a job of
    # at most `memory_stream_max_tasks` tasks, whose loss costs a small
    # republish, file for a larger one.
    stream_storage: str = Field(default="auto", pattern="^(auto|file|memory)$")
    memory_stream_max_tasks: int = Field(default=1_000, ge=0)
    # Where `jobsys worker` / `jobsys process` serve Prometheus metrics (None: off).
    metrics_port: int | None = Field(default=None, ge=1, le=65_535)
    log_format: str = Field(default="text", pattern="^(text|json)$")
    log_level: str = "INFO"

    @field_validator("env_file")
    @classmethod
    def _env_file_exists(cls, value: Path | None) -> Path | None:
        # A file named on purpose and not there is a mistake, not "no settings".
        if value is not None and not value.expanduser().is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace_is_a_nats_token(cls, value: str) -> str:
        # Stream names may not contain '.', '*', '>' or whitespace.
        if not _NAMESPACE_RE.match(value):
            raise ValueError("must be 1-40 characters of letters, digits, '_' or '-'")
        return value

    @field_validator("pipeline_modules")
    @classmethod
    def _modules_are_module_names(cls, value: str) -> str:
        # An empty or odd prefix must not quietly allow more than meant.
        for prefix in (p.strip() for p in value.split(",")):
            if prefix and not MODULE_NAME_RE.match(prefix):
                raise ValueError(f"{prefix!r} is not a module name (give e.g. mypkg,other.jobs)")
        return value

    @field_validator("hook_headers")
    @classmethod
    def _hook_headers_are_headers_by_origin(cls, value: SecretStr | None) -> SecretStr | None:
        # The message names the problem, never a value (it may hold a credential).
        if value is not None:
            parse_hook_headers(value.get_secret_value())
        return value

    @field_validator("rate_limits")
    @classmethod
    def _rate_limits_parse(cls, value: str) -> str:
        parse_rate_limits(value)
        return value

    @property
    def pipeline_rates(self) -> dict[str, float]:
        """JOBSYS_RATE_LIMITS as {pipeline: tasks per second}."""
        return parse_rate_limits(self.rate_limits)

    @property
    def dramatiq_namespace(self) -> str:
        """Redis key prefix of this deployment's Dramatiq queues."""
        return f"{self.namespace}-dramatiq"


def user_env_file() -> Path:
    """``$XDG_CONFIG_HOME/jobsys/env``, or ``~/.config/jobsys/env``."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    # The XDG spec: a relative XDG_CONFIG_HOME is invalid and ignored.
    root = Path(base) if os.path.isabs(base) else Path("~/.config").expanduser()
    return root / "jobsys" / "env"


def env_file_places() -> list[Path]:
    """Every env file jobsys looks at, highest precedence first (present or not)."""
    named = os.environ.get(ENV_FILE_SETTING)
    places = [Path(named).expanduser()] if named else []
    return [*places, PROJECT_ENV_FILE, user_env_file(), SYSTEM_ENV_FILE]


def env_files() -> list[Path]:
    """The env files read, highest precedence first: those of `env_file_places` that
    exist and this user may read (``/etc/jobsys/env`` may be root's alone)."""
    return [p for p in env_file_places() if p.is_file() and os.access(p, os.R_OK)]


def setting_sources() -> dict[str, str]:
    """Where each setting comes from now: "environment", an env file's path, or
    "default" (by field name, as `Settings` reads them)."""
    environ = {k.upper(): k for k in os.environ}
    files = [(str(p.absolute()), {k.upper() for k in dotenv_values(p)}) for p in env_files()]
    sources: dict[str, str] = {}
    for field in Settings.model_fields:
        name = f"{PREFIX}{field.upper()}"
        if name in environ:
            sources[field] = "environment"
            continue
        sources[field] = next((path for path, keys in files if name in keys), "default")
    return sources


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of an http(s) URL, lower case, default port left out."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    default = {"http": 80, "https": 443}.get(scheme)
    netloc = (parts.hostname or "").lower()
    if ":" in netloc:
        netloc = f"[{netloc}]"  # an IPv6 address
    if port is not None and port != default:
        netloc = f"{netloc}:{port}"
    return f"{scheme}://{netloc}"


def parse_hook_headers(text: str) -> dict[str, dict[str, str]]:
    """JOBSYS_HOOK_HEADERS read: {origin: {header: value}}; ValueError naming what is
    wrong (never a value)."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ValueError("must be a JSON object {origin: {header: value}}") from None
    if not isinstance(data, dict):
        raise ValueError("must be a JSON object {origin: {header: value}}")
    out: dict[str, dict[str, str]] = {}
    for origin, headers in data.items():
        if not isinstance(origin, str) or not origin.lower().startswith(("http://", "https://")):
            raise ValueError("each key must be an origin, e.g. https://hooks.example.com")
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and _HEADER_NAME_RE.match(k) and isinstance(v, str)
            and not any(c in v for c in "\r\n\0")
            for k, v in headers.items()
        ):  # fmt: skip
            raise ValueError(f"the headers of {origin_of(origin)} must be names to text values")
        out[origin_of(origin)] = dict(headers)
    return out


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (tests change the environment)."""
    get_settings.cache_clear()
