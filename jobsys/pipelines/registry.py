"""The pipeline registry: `@pipeline("name")` and how a pipeline is called (`PipelineSpec`).

A pipeline is a function from a task payload (dict) to a result (dict). With
`batch_size` it takes a list of payloads (and, when it has a `setup`, what
`setup()` returned, made once per execution process: a loaded model) and
returns one result per payload, where a result may be an exception instance
(that task's own failure). The processor groups up to `batch_size` tasks of
one job, waiting at most `batch_wait_s` for a batch to fill (see
jobsys.processor). Which names may run is `jobsys.pipelines.resolve`'s business.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Pipeline = Callable[..., Any]

# How long a batch pipeline's tasks wait for a batch to fill, by default.
DEFAULT_BATCH_WAIT_S = 0.05
# The attribute `@pipeline` sets on a function, so ``module:function`` finds
# its batch size and setup too.
SPEC_ATTR = "__jobsys_pipeline__"


@dataclass(frozen=True)
class PipelineSpec:
    """How to call a pipeline: one payload per call, or a batch of up to `batch_size`."""

    name: str
    fn: Pipeline
    batch_size: int | None = None
    setup: Callable[[], Any] | None = None
    batch_wait_s: float = DEFAULT_BATCH_WAIT_S

    @property
    def is_batch(self) -> bool:
        """Whether the function takes a list of payloads."""
        return self.batch_size is not None


def pipeline(
    name: str,
    *,
    batch_size: int | None = None,
    setup: Callable[[], Any] | None = None,
    batch_wait_s: float = DEFAULT_BATCH_WAIT_S,
) -> Callable[[Pipeline], Pipeline]:
    """Register a function as the pipeline called `name`.

    With `batch_size`, the function takes ``(payloads)`` -- or
    ``(payloads, context)`` when `setup` is given, `context` being what
    `setup()` returned in this execution process -- and returns a list with
    one result (or exception) per payload.
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if setup is not None and batch_size is None:
        raise ValueError("setup is for batch pipelines (give batch_size too)")

    def register(fn: Pipeline) -> Pipeline:
        spec = PipelineSpec(name, fn, batch_size, setup, batch_wait_s)
        setattr(fn, SPEC_ATTR, spec)
        return fn

    return register
