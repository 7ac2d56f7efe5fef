"""Which pipeline a name means, and whether this deployment allows it to run.

A pipeline is one of the built-ins (jobsys.pipelines.builtins), one an
installed package declares under the entry-point group ``jobsys.pipelines``,
or ``module:function`` under a module prefix of ``JOBSYS_PIPELINE_MODULES``:
allowed, not merely importable (jobsys.pipelines.allow; `resolve` checks
before it imports anything). `@pipeline` on a function of an allowed module
gives it a batch size and setup; its name is not a way to reach it. The
fault-injecting pipelines of jobsys.testing.faults run only where
``JOBSYS_FAULT_PIPELINES=true``.

What an exception costs (given up on, or delivered again up to max_deliver)
is the pipeline's retry rules: `PipelineSpec.gives_up`.
"""

from __future__ import annotations

import importlib

from jobsys.display import one_line
from jobsys.errors import InvalidInput
from jobsys.pipelines.allow import (
    MODULES_SETTING,
    NotAllowed,
    check_reference,
    declared_pipelines,
    module_prefixes,
)
from jobsys.pipelines.builtins import BUILTINS
from jobsys.pipelines.registry import SPEC_ATTR, Pipeline, PipelineSpec
from jobsys.settings import get_settings
from jobsys.testing import faults

# The fault-injecting pipelines (jobsys.testing.faults), by name.
FAULTS = {
    "fault-echo": PipelineSpec("fault-echo", faults.fault_echo),
    "fault-echo-batch": PipelineSpec("fault-echo-batch", faults.fault_echo_batch, batch_size=64),
}
FAULTS_SETTING = "JOBSYS_FAULT_PIPELINES"


def _fault(name: str) -> PipelineSpec:
    """A fault pipeline, if this deployment allows them."""
    if not get_settings().fault_pipelines:
        raise NotAllowed(
            f"pipeline {name!r} injects faults for tests; it runs only where {FAULTS_SETTING}=true"
        )
    return FAULTS[name]


def resolve(name: str) -> Pipeline:
    """The allowed pipeline called `name`: built in, declared by an installed package
    (entry point), or ``module:function`` under JOBSYS_PIPELINE_MODULES.

    Raises InvalidInput (jobsys.pipelines.allow.NotAllowed when it is not allowed) with
    one line; a module that is not allowed is never imported.
    """
    if name in BUILTINS:
        return BUILTINS[name]
    if name in FAULTS:
        return _fault(name).fn
    declared = declared_pipelines()
    if name in declared:
        try:
            fn = declared[name].load()
        except Exception as exc:
            raise InvalidInput(
                f"pipeline {name!r}: cannot load {declared[name].value!r}: {exc}"
            ) from None
        if not callable(fn):
            raise InvalidInput(f"pipeline {name!r}: {declared[name].value!r} is not a function")
        return fn
    if ":" in name:
        module_name, attr = check_reference(name, "pipeline")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # anything the module raises as it loads: say what
            why = f"{type(exc).__name__}: {one_line(exc)}"
            raise InvalidInput(
                f"pipeline {name!r}: cannot import module {module_name!r}: {why}"
            ) from exc
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise InvalidInput(f"pipeline {name!r}: {module_name} has no function {attr!r}")
        return fn
    known = ", ".join(sorted(BUILTINS))
    extra = f"; declared by installed packages: {', '.join(sorted(declared))}" if declared else ""
    raise InvalidInput(
        f"unknown pipeline {name!r} (built in: {known}{extra}; or module:function "
        "under JOBSYS_PIPELINE_MODULES)"
    )


def resolve_spec(name: str) -> PipelineSpec:
    """How to call the pipeline called `name` (registered or ``module:function``)."""
    if name in FAULTS:
        return _fault(name)
    fn = resolve(name)
    spec = getattr(fn, SPEC_ATTR, None)
    if isinstance(spec, PipelineSpec):
        return spec
    return PipelineSpec(name, fn)


def servable() -> tuple[list[str], list[str]]:
    """What this process may run: pipeline names (built in, declared by installed
    packages, the fault pipelines where allowed) and the JOBSYS_PIPELINE_MODULES prefixes."""
    names = sorted(BUILTINS) + sorted(declared_pipelines())
    if get_settings().fault_pipelines:
        names += sorted(FAULTS)
    return names, list(module_prefixes())


def why_not_here(name: str) -> str | None:
    """Why this process will not run pipeline `name`, in a few words; None if it would.

    A name that is not allowed is judged without importing anything; an allowed
    one is loaded (as a processor does before serving it).
    """
    try:
        resolve_spec(name)
    except NotAllowed:
        if name in FAULTS:
            return f"fault pipelines are off here ({FAULTS_SETTING})"
        return f"not allowed by {MODULES_SETTING}"
    except InvalidInput as exc:
        if ":" not in name and name not in BUILTINS and name not in declared_pipelines():
            return "unknown here (not built in, not declared by an installed package)"
        return f"cannot be loaded here: {one_line(exc)}"
    except Exception as exc:  # the pipeline's own module failed to import
        return f"cannot be loaded here: {one_line(exc)}"
    return None
