"""Which pipeline a name means, and what may run. No server."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from jobsys.errors import InvalidInput, PermanentError, TransientError
from jobsys.pipelines import pipeline, resolve, resolve_spec
from jobsys.pipelines.allow import NotAllowed
from jobsys.pipelines.builtins import echo, echo_batch
from jobsys.settings import get_settings


def test_the_builtins_do_what_their_names_say() -> None:
    assert echo({"n": 1}) == {"n": 1}
    with pytest.raises(PermanentError):
        echo({"fail": True})
    with pytest.raises(TransientError):
        echo({"transient": True})
    out = echo_batch([{"n": 1}, {"fail": True}])
    assert out[0] == {"n": 1} and isinstance(out[1], PermanentError)
    # The fault vocabulary is not echo's: a crash key is just data.
    assert echo({"crash": "kill", "hang": True, "odd": "nan"}) == {
        "crash": "kill",
        "hang": True,
        "odd": "nan",
    }
    assert resolve_spec("echo-batch").batch_size == 64


def test_fault_pipelines_run_only_where_the_setting_allows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = get_settings()
    monkeypatch.setattr(settings, "fault_pipelines", False)
    with pytest.raises(NotAllowed, match="JOBSYS_FAULT_PIPELINES=true"):
        resolve("fault-echo")
    monkeypatch.setattr(settings, "fault_pipelines", True)
    assert resolve_spec("fault-echo-batch").batch_size == 64


@pytest.mark.parametrize("name", ["os:system", "testsevil:run", "tests_x.y:run", "builtins:eval"])
def test_a_module_outside_the_allowed_prefixes_is_refused_and_never_imported(name: str) -> None:
    module = name.split(":")[0]
    was_loaded = module in sys.modules
    with pytest.raises(NotAllowed, match="is not allowed"):
        resolve(name)
    assert (module in sys.modules) == was_loaded


def test_an_unknown_name_lists_what_is_built_in() -> None:
    with pytest.raises(InvalidInput, match=r"unknown pipeline 'nope' \(built in: echo, echo-batch"):
        resolve("nope")


def test_a_bare_pipeline_decorator_is_refused_where_it_is_written() -> None:
    # `@pipeline` without its name once decorated silently: every task of the
    # function failed with "'dict' object has no attribute '__jobsys_pipeline__'".
    def square(item: dict[str, int]) -> dict[str, int]:
        return {"sq": item["n"] ** 2}

    with pytest.raises(TypeError, match=r'@pipeline\("square"'):
        pipeline(square)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name"):
        pipeline("")


@pytest.mark.parametrize(
    ("source", "cause"),
    [
        ("from jobsys import no_such_name\n", "ImportError: cannot import name 'no_such_name'"),
        ("def broken(:\n", "SyntaxError"),
        ("raise RuntimeError('no config file')\n", "RuntimeError: no config file"),
    ],
)
def test_a_module_that_fails_to_import_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, cause: str
) -> None:
    # A newcomer's first pipeline module once failed with only "cannot import
    # module 'mypipes'": the ImportError inside it was not shown.
    module = f"mypipes_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(get_settings(), "pipeline_modules", module)
    with pytest.raises(InvalidInput) as err:
        resolve(f"{module}:double")
    message = str(err.value)
    assert f"cannot import module {module!r}: {cause}" in message, message
    assert "\n" not in message
