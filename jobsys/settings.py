"""Every tunable of jobsys, read from ``JOBSYS_*`` environment variables.

Defaults are chosen so that a single machine with the stock services works
without any configuration, and so that crashed processes are recovered in
seconds rather than minutes (see DESIGN.md, "Facts measured").
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# `make services` writes the URLs of project-local fallback servers here, so
# every later command finds them without the user exporting anything.
LOCAL_ENV_FILE = Path(".services") / "jobsys.env"

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


class Settings(BaseSettings):
    """jobsys configuration; each field is ``JOBSYS_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="JOBSYS_",
        env_file=os.environ.get("JOBSYS_ENV_FILE", str(LOCAL_ENV_FILE)),
        extra="ignore",
    )

    database_url: str = "postgresql://postgres@127.0.0.1:5432/jobsys"
    redis_url: str = "redis://127.0.0.1:6379/0"
    nats_url: str = "nats://127.0.0.1:4222"
    namespace: str = Field(
        default="jobsys",
        description="Prefix of NATS streams/consumers and of the Dramatiq Redis namespace.",
    )

    # NATS consumer behaviour.
    ack_wait_s: float = Field(default=30.0, gt=0)
    max_deliver: int = Field(default=5, ge=1)
    max_ack_pending: int = Field(default=20_000, ge=1)
    nak_delay_s: float = Field(default=1.0, ge=0)
    publish_window: int = Field(default=1_000, ge=1)

    # Processor behaviour.
    result_batch_size: int = Field(default=100, ge=1)
    result_flush_ms: int = Field(default=100, ge=1)
    job_refresh_s: float = Field(default=0.25, gt=0)
    max_result_bytes: int = Field(default=1_000_000, ge=1)
    # Results sent but not yet recorded are held (kept in progress in NATS,
    # re-sent if Redis lost them) this long at most, then NATS may redeliver.
    result_hold_s: float = Field(default=300.0, gt=0)
    # A processor holding this many unrecorded results stops fetching. Steady
    # state holds ~throughput x 0.2 s (a few hundred); more only means the
    # recorder is slow or down, and a processor killed then loses its hold.
    max_held_results: int = Field(default=2_000, ge=1)

    # Dramatiq's Redis broker: recover a killed worker's messages in seconds.
    heartbeat_timeout_ms: int = Field(default=10_000, ge=1_000)
    maintenance_chance: int = Field(default=50_000, ge=0, le=1_000_000)

    # Reconciler thresholds.
    reconcile_every_s: float = Field(default=60.0, gt=0)
    lost_after_s: float = Field(default=120.0, gt=0)
    queued_stale_s: float = Field(default=60.0, gt=0)
    cancel_grace_s: float = Field(default=60.0, gt=0)
    # Each pass prunes rate rollups and quiet pass records older than this.
    history_days: float = Field(default=7.0, gt=0)

    db_pool_size: int = Field(default=8, ge=1)
    log_format: str = Field(default="text", pattern="^(text|json)$")
    log_level: str = "INFO"

    @field_validator("namespace")
    @classmethod
    def _namespace_is_a_nats_token(cls, value: str) -> str:
        # Stream names may not contain '.', '*', '>' or whitespace.
        if not _NAMESPACE_RE.match(value):
            raise ValueError("must be 1-40 characters of letters, digits, '_' or '-'")
        return value

    @property
    def dramatiq_namespace(self) -> str:
        """Redis key prefix of this deployment's Dramatiq queues."""
        return f"{self.namespace}-dramatiq"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (tests change the environment)."""
    get_settings.cache_clear()
