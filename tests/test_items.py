"""Items files and submit validation: bad input creates nothing and says where."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

import jobsys
from jobsys.api.items import (
    MAX_ITEM_BYTES,
    MAX_ITEM_DEPTH,
    MESSAGE_HEADROOM,
    counted_items,
    read_items,
)
from jobsys.errors import InvalidInput
from jobsys.pg.db import connection
from tests.helpers import configured_nats


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
    job = jobsys.submit("echo", read_items(path), name="x'); DELETE FROM jobs; --")
    with connection() as conn:
        row = conn.execute(
            "SELECT payload::text AS p FROM job_tasks WHERE job_id = %s", (job.id,)
        ).fetchone()
    assert row is not None and row["p"] == line
    assert jobsys.get_job(job.id).name == "x'); DELETE FROM jobs; --"


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


def _nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


@pytest.mark.parametrize("depth", [1_000, 990, MAX_ITEM_DEPTH + 1])
def test_a_line_nested_too_deeply_is_refused_with_its_place(tmp_path: Path, depth: int) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text('{"a": 1}\n' + _nested(depth) + "\n")
    before = _job_count()
    with pytest.raises(InvalidInput, match=rf"items.jsonl:2: nested {depth:,} levels deep"):
        jobsys.submit("echo", read_items(path))
    assert _job_count() == before


def test_a_line_nested_to_the_limit_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text(_nested(MAX_ITEM_DEPTH) + "\n")
    job = jobsys.submit("echo", read_items(path))
    assert job.status().total == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_nested(1_000), "item 2: nested 1,000 levels deep"),
        (_nested(MAX_ITEM_DEPTH + 1), f"item 2: nested {MAX_ITEM_DEPTH + 1} levels deep"),
        ("[1, 2]", "item 2: expected a JSON object, got list"),
        ('{"a": NaN}', "item 2: invalid JSON"),
        ("not json", "item 2: invalid JSON"),
        ('{"a": "\ud800"}', "item 2: not valid UTF-8"),
        ('{"a": "' + "x" * 1_000_000 + '"}', "item 2: text is 1,000,009 bytes"),
    ],
)
def test_the_library_checks_item_texts_it_is_given_directly(text: str, message: str) -> None:
    before = _job_count()
    with pytest.raises(InvalidInput, match=message):
        jobsys.submit("echo", ['{"ok": true}', text])
    assert _job_count() == before


def test_a_huge_line_without_a_newline_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    size = 40 * MAX_ITEM_BYTES
    with path.open("wb") as f:
        f.write(b'{"ok": 1}\n{"big": "')
        for _ in range(size // 1_000_000):
            f.write(b"x" * 1_000_000)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput, match=rf"items.jsonl:2: line is {size + 9:,} bytes"):
            jobsys.submit("echo", read_items(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Reading it whole would hold the 40 MB line (twice, with its stripped copy).
    assert peak < 5 * MAX_ITEM_BYTES, f"peak {peak:,} bytes"


def _jobsys_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobsys.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_the_cli_reports_a_deeply_nested_line_in_one_line_without_a_traceback(
    tmp_path: Path,
) -> None:
    path = tmp_path / "deep.jsonl"
    path.write_text(_nested(1_000) + "\n")
    before = _job_count()
    proc = _jobsys_cli("submit", "echo", "--items", str(path))
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"jobsys: {path}:1: nested 1,000 levels deep; at most {MAX_ITEM_DEPTH} levels are allowed"
    ]
    assert _job_count() == before


SMALL_MAX_PAYLOAD = 65_536


@pytest.fixture(scope="module")
def small_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private nats-server whose max_payload is 64 KiB; yields its URL."""
    root = tmp_path_factory.mktemp("small-nats")
    with configured_nats(root, config=f"max_payload: {SMALL_MAX_PAYLOAD}") as url:
        yield url


def _item_of(size: int) -> str:
    text = '{"blob": "' + "x" * (size - 12) + '"}'
    assert len(text) == size
    return text


def test_an_item_over_the_nats_servers_max_payload_is_refused_at_submit(
    tmp_path: Path, small_nats: str
) -> None:
    path = tmp_path / "items.jsonl"
    # The task message also carries headers: an item of the server's limit
    # minus a few bytes would still be refused by NATS at bootstrap.
    path.write_text('{"a": 1}\n' + _item_of(SMALL_MAX_PAYLOAD - 10) + "\n")
    before = _job_count()
    proc = _jobsys_cli("submit", "echo", "--items", str(path), env={"JOBSYS_NATS_URL": small_nats})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    line = proc.stderr.strip()
    assert line.startswith(f"jobsys: {path}:2: item is {SMALL_MAX_PAYLOAD - 10:,} bytes")
    assert f"max_payload {SMALL_MAX_PAYLOAD:,}" in line
    assert _job_count() == before


def test_an_item_that_fits_the_nats_servers_max_payload_is_accepted(
    tmp_path: Path, small_nats: str
) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text(_item_of(SMALL_MAX_PAYLOAD - MESSAGE_HEADROOM) + "\n")
    proc = _jobsys_cli(
        "submit", "echo", "--items", str(path), "--json", env={"JOBSYS_NATS_URL": small_nats}
    )
    assert proc.returncode == 0, proc.stderr


def test_submit_goes_on_with_the_static_item_limit_when_nats_is_unreachable(
    tmp_path: Path,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])  # nothing listens there once closed
    path = tmp_path / "items.jsonl"
    path.write_text('{"a": 1}\n')
    proc = _jobsys_cli(
        "submit", "echo", "--items", str(path), "--json",
        env={"JOBSYS_NATS_URL": f"nats://127.0.0.1:{port}"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "NATS" in proc.stderr and "not reachable" in proc.stderr
