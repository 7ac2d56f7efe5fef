"""Items files and submit validation: bad input creates nothing and says where."""

from __future__ import annotations

from pathlib import Path

import pytest

import jobsys
from jobsys.db import connection
from jobsys.errors import InvalidInput
from jobsys.items import counted_items, read_items


def _job_count() -> int:
    with connection() as conn:
        row = conn.execute("SELECT count(*) AS n FROM jobs").fetchone()
    assert row is not None
    return int(row["n"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"a": 1}\n{"a": 2\n', "items.jsonl:2: invalid JSON"),
        (b'{"a": 1}\n[1, 2]\n', "items.jsonl:2: expected a JSON object, got list"),
        (b"", "items.jsonl: items file has no items"),
        (b'{"a": 1}\n{"a": "\xff"}\n', "items.jsonl:2: not valid UTF-8"),
        (b'{"a": NaN}\n', "items.jsonl:1: invalid JSON"),
        (
            b'{"a": 1}\n{"big": "' + b"x" * 2_000_000 + b'"}\n',
            "items.jsonl:2: line is 2,000,011 bytes",
        ),
        (b"\n\n   \n", "items.jsonl: items file has no items"),
    ],
)
def test_a_bad_items_file_names_the_line_and_creates_no_job(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "items.jsonl"
    path.write_bytes(content)
    before = _job_count()
    with pytest.raises(InvalidInput, match=message.replace("[", r"\[")):
        jobsys.submit("echo", read_items(path))
    assert _job_count() == before


def test_a_bad_line_after_many_good_ones_still_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text('{"ok": true}\n' * 30_000 + "oops\n")
    before = _job_count()
    with pytest.raises(InvalidInput, match=r"items.jsonl:30001: invalid JSON"):
        jobsys.submit("echo", read_items(path))
    assert _job_count() == before


def test_payloads_are_stored_exactly_as_given(tmp_path: Path) -> None:
    line = '{"q": "\'; DROP TABLE jobs; --", "nul": "a\\u0000b", "u": "\\u00e9t\\u00e9"}'
    path = tmp_path / "items.jsonl"
    path.write_text(line + "\n")
    view = jobsys.submit("echo", read_items(path), name="x'); DELETE FROM jobs; --")
    with connection() as conn:
        row = conn.execute(
            "SELECT payload::text AS p FROM job_tasks WHERE job_id = %s", (view.job_id,)
        ).fetchone()
    assert row is not None and row["p"] == line
    assert jobsys.get_job(view.job_id).name == "x'); DELETE FROM jobs; --"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"failure_threshold": 1.5}, "failure-threshold"),
        ({"failure_threshold": -0.1}, "failure-threshold"),
        ({"max_deliver": 0}, "max-deliver"),
        ({"name": "a\x00b"}, "NUL characters"),
        ({"name": "n" * 10_001}, "name: String should have at most 10000 characters"),
    ],
)
def test_submit_options_are_validated_before_anything_is_written(
    kwargs: dict[str, object], message: str
) -> None:
    before = _job_count()
    with pytest.raises(InvalidInput, match=message):
        jobsys.submit("echo", counted_items(3), **kwargs)  # type: ignore[arg-type]
    assert _job_count() == before


def test_an_unknown_pipeline_is_refused() -> None:
    with pytest.raises(InvalidInput, match="unknown pipeline 'nope'"):
        jobsys.submit("nope", counted_items(1))


def test_negative_count_is_refused() -> None:
    with pytest.raises(InvalidInput, match="--count must be 0 or more"):
        list(counted_items(-1))
