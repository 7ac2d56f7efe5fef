"""Pipelines: `@pipeline` (registry), the built-ins, what may run (allow) and which
function a name means (resolve)."""

from jobsys.pipelines.registry import Pipeline, PipelineSpec, pipeline
from jobsys.pipelines.resolve import resolve, resolve_spec

__all__ = ["Pipeline", "PipelineSpec", "pipeline", "resolve", "resolve_spec"]
