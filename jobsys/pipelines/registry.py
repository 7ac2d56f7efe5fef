"""The pipeline registry: `@pipeline("name")` and how a pipeline is called (`PipelineSpec`).

A pipeline is a function from a task payload (dict) to a result (dict). With
`batch_size` it takes a list of payloads (and, when it has a `setup`, what
`setup()` returned, made once per execution process: a loaded model) and
returns one result per payload, where a result may be an exception instance
(that task's own failure). The processor groups up to `batch_size` tasks of
one job, waiting at most `batch_wait_s` for a batch to fill (see
jobsys.processor). Which names may run is `jobsys.pipelines.resolve`'s business.

What a failure costs is declared here too (`retry_on`, `give_up_on`,
`retry_delay`): see `PipelineSpec.gives_up` and docs/processor.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jobsys.errors import PermanentError, TransientError

Pipeline = Callable[..., Any]
ExceptionTypes = tuple[type[BaseException], ...]

# What a pipeline that declares nothing gives up on at its first delivery:
# errors a re-run on the same input repeats -- bad or missing data (a
# ValueError, a KeyError for a missing field, a file that is not there) and
# bugs (TypeError, AttributeError, ...). Every other exception (network and
# OS errors, timeouts, a library's own exceptions) is retried: a wrongly
# retried task costs a few runs, a wrongly failed one needs `jobsys retry`.
DEFAULT_GIVE_UP: ExceptionTypes = (
    ValueError,
    TypeError,
    LookupError,
    AttributeError,
    ArithmeticError,
    AssertionError,
    NotImplementedError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)
DEFAULT_RETRY_ON: ExceptionTypes = (Exception,)

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
    retry_on: ExceptionTypes = DEFAULT_RETRY_ON
    give_up_on: ExceptionTypes = DEFAULT_GIVE_UP
    # (base, max) seconds between deliveries of a transient failure, or None
    # for the job's own (`jobsys submit --retry-delay`, else the settings').
    retry_delay: tuple[float, float] | None = None

    def gives_up(self, exc: BaseException) -> bool:
        """Whether `exc` raised by this pipeline fails its task at once (no retry).

        `PermanentError` always does and `TransientError` never does. Otherwise
        the most specific class of `retry_on` or `give_up_on` that `exc` is an
        instance of decides (``retry_on=(ConnectionError,),
        give_up_on=(OSError,)`` retries a ConnectionError and gives up on any
        other OSError); an exception neither names is given up on.
        """
        if isinstance(exc, PermanentError):
            return True
        if isinstance(exc, TransientError):
            return False
        for cls in type(exc).__mro__:
            if cls in self.give_up_on:
                return True
            if cls in self.retry_on:
                return False
        return True

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
    retry_on: ExceptionTypes = DEFAULT_RETRY_ON,
    give_up_on: ExceptionTypes = DEFAULT_GIVE_UP,
    retry_delay: float | tuple[float, float] | None = None,
) -> Callable[[Pipeline], Pipeline]:
    """Register a function as the pipeline called `name`.

    With `batch_size`, the function takes ``(payloads)`` -- or
    ``(payloads, context)`` when `setup` is given, `context` being what
    `setup()` returned in this execution process -- and returns a list with
    one result (or exception) per payload.

    `retry_on` and `give_up_on` say which exceptions are retried (delivered
    again, up to the job's max_deliver) and which fail the task at its first
    delivery; the most specific match wins, an exception neither names is
    given up on. By default everything is retried but `DEFAULT_GIVE_UP` (bad
    data and bugs); ``give_up_on=()`` retries every exception. `retry_delay`
    is the backoff between deliveries of a transient failure: BASE seconds,
    doubling up to MAX (``(1, 300)``; a single number is BASE with the
    settings' MAX), with jitter; it overrides the job's.
    """
    if callable(name):
        # `@pipeline` without its name: it would register nothing and make the
        # function a decorator, and every task would fail far from here.
        fn_name = getattr(name, "__name__", "name")
        raise TypeError(f'@pipeline needs the pipeline\'s name: @pipeline("{fn_name}")')
    if not isinstance(name, str) or not name:
        raise TypeError("@pipeline needs the pipeline's name, a non-empty string")
    if batch_size is not None and batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if setup is not None and batch_size is None:
        raise ValueError("setup is for batch pipelines (give batch_size too)")
    # A class declared on one side leaves the other side's default.
    if retry_on is DEFAULT_RETRY_ON:
        retry_on = tuple(c for c in retry_on if c not in give_up_on)
    if give_up_on is DEFAULT_GIVE_UP:
        give_up_on = tuple(c for c in give_up_on if c not in retry_on)
    retry_on = _exception_types("retry_on", retry_on)
    give_up_on = _exception_types("give_up_on", give_up_on)
    both = set(retry_on) & set(give_up_on)
    if both:
        names = ", ".join(sorted(c.__name__ for c in both))
        raise ValueError(f"{names} is in both retry_on and give_up_on")
    delay = retry_delay_pair(retry_delay)

    def register(fn: Pipeline) -> Pipeline:
        spec = PipelineSpec(name, fn, batch_size, setup, batch_wait_s, retry_on, give_up_on, delay)
        setattr(fn, SPEC_ATTR, spec)
        return fn

    return register


def _exception_types(what: str, value: Any) -> ExceptionTypes:
    if isinstance(value, type):
        value = (value,)
    if not isinstance(value, tuple | list) or not all(
        isinstance(c, type) and issubclass(c, BaseException) for c in value
    ):
        raise ValueError(f"{what} must be a tuple of exception classes")
    return tuple(value)


def retry_delay_pair(value: float | tuple[float, float] | None) -> tuple[float, float] | None:
    """A retry delay as (base, max) seconds; a lone number is (base, inf): capped later
    by the settings' maximum. None stays None."""
    if value is None:
        return None
    if isinstance(value, int | float):
        pair = (float(value), float("inf"))
    elif isinstance(value, tuple | list) and len(value) == 2:
        pair = (float(value[0]), float(value[1]))
    else:
        raise ValueError("retry_delay must be seconds or (base, max) seconds")
    if not (pair[0] >= 0 and pair[1] >= pair[0]):
        raise ValueError("retry_delay needs 0 <= base <= max")
    return pair
