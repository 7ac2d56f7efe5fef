"""Which code a job may name: allowed, not merely importable.

A job names code twice: its pipeline (run by every processor) and its
completion hook (a ``module:actor`` target, sent to by workers). Importing a
module runs its code, and anyone who can submit a job, or create a stream
in NATS, chooses these names; so a name is checked here before anything is
imported. Allowed are:

- the built-in pipelines (``jobsys.pipelines``: echo, echo-batch, sha256);
- pipelines that installed packages declare under the entry-point group
  ``jobsys.pipelines`` (``name = module:function``, the way pytest finds
  plugins), by their declared name;
- ``module:function`` (or ``module:actor``) whose module is under one of the
  prefixes listed in ``JOBSYS_PIPELINE_MODULES`` (comma-separated). A prefix
  matches whole dotted components: ``mypkg`` allows ``mypkg`` and
  ``mypkg.jobs`` but not ``mypkgevil``.

`check_reference` is the one rule for ``module:attr`` names: submit and the
processor apply it through `jobsys.pipelines.resolve`, completion hooks
through `jobsys.hooks.target.check_target`.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from jobsys.errors import InvalidInput
from jobsys.settings import MODULE_NAME_RE, get_settings

# The entry-point group installed packages declare their pipelines in.
ENTRY_POINT_GROUP = "jobsys.pipelines"
# The setting that lists the allowed module prefixes.
MODULES_SETTING = "JOBSYS_PIPELINE_MODULES"


class NotAllowed(InvalidInput):
    """A pipeline or hook target that this deployment does not allow to run."""


def is_module_name(text: str) -> bool:
    """Whether `text` is an absolute dotted module name (``a``, ``a.b``)."""
    return bool(MODULE_NAME_RE.match(text))


def module_prefixes() -> tuple[str, ...]:
    """The module prefixes of JOBSYS_PIPELINE_MODULES (checked by `jobsys.settings`)."""
    return tuple(p.strip() for p in get_settings().pipeline_modules.split(",") if p.strip())


def module_allowed(module: str, prefixes: tuple[str, ...]) -> bool:
    """Whether `module` is one of `prefixes` or inside one (whole dotted components)."""
    return any(module == p or module.startswith(f"{p}.") for p in prefixes)


def declared_pipelines() -> dict[str, EntryPoint]:
    """Pipelines installed packages declare (group ``jobsys.pipelines``), by name.

    Read from the installed distributions' metadata on each call (a process
    sees the packages installed when it looks; processors look once per job).
    """
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def check_reference(ref: str, what: str = "pipeline") -> tuple[str, str]:
    """``(module, attr)`` of a ``module:attr`` reference this deployment allows.

    Raises NotAllowed (one line saying how to allow it) for a module outside
    JOBSYS_PIPELINE_MODULES, and InvalidInput for text that is not a
    reference; nothing is imported here. `what` names the reference in the
    message ("pipeline", "on-complete:").
    """
    module, sep, attr = ref.partition(":")
    if not sep or not attr:
        raise InvalidInput(f"{what} {ref!r} is not module:function")
    if not is_module_name(module):
        raise InvalidInput(f"{what} {ref!r}: {module!r} is not a module name")
    if not module_allowed(module, module_prefixes()):
        how = f"list {module!r} (or a parent module) in {MODULES_SETTING}"
        if what == "pipeline":
            how += f", or declare it under the entry-point group {ENTRY_POINT_GROUP!r} of a package"
        raise NotAllowed(f"{what} {ref!r} is not allowed: {how}")
    return module, attr
