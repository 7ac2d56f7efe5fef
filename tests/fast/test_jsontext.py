"""orjson on the hot paths (jobsys.jsontext) writes and reads exactly what json does.

Processes of different versions sign, encode, decode and store the same
messages: a byte of difference would make a signature fail or a stored
result change. So every value json handles is compared with json's own
output, including the ones orjson writes differently (NaN, non-ASCII, DEL,
small and large floats, integers beyond 64 bits).
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

import pytest
from dramatiq.errors import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from jobsys import jsontext
from jobsys.dramatiq.broker import RESULTS_QUEUE, FastJSONEncoder
from jobsys.dramatiq.messages import PROCESS_RESULTS, _signed
from jobsys.dramatiq.signing import _canonical
from jobsys.models import TaskResult
from jobsys.processor.outbox import wire_item

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([1e-5, 1e16, 1e22, 5e-324, 0.0001, -0.0, 1.5e300, 2**64 - 1, 2**63])
    | st.text(max_size=12)
    | st.sampled_from(["\x7f", "é", "\U0001f600", "\x00", "\ud800", "null", "1e5", "0.00001"])
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)


def old_canonical(actor: str, args: Any, kwargs: Any) -> bytes:
    """The canonical form before orjson (what a process of an older version signs)."""
    return json.dumps(
        [actor, args, kwargs], sort_keys=True, separators=(",", ":"), default=str
    ).encode("utf-8")


def same(a: Any, b: Any) -> bool:
    """Equal values, NaN equal to NaN, an int never equal to a float."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


@settings(max_examples=500)
@given(values, st.booleans())
def test_dumps_is_json_byte_for_byte(value: Any, sort_keys: bool) -> None:
    want = json.dumps(value, separators=(",", ":"), sort_keys=sort_keys).encode("utf-8")
    assert jsontext.dumps(value, sort_keys=sort_keys) == want


@settings(max_examples=500)
@given(values)
def test_loads_reads_what_json_reads(value: Any) -> None:
    text = json.dumps(value)
    assert same(jsontext.loads(text), json.loads(text))
    assert same(jsontext.loads(text.encode("utf-8", "surrogatepass")), json.loads(text))


@settings(max_examples=300)
@given(st.text(max_size=6), st.lists(values, max_size=3))
def test_canonical_form_is_the_old_one(actor: str, args: list[Any]) -> None:
    """A signature made by this version checks in an older one, and the reverse."""
    assert _canonical(actor, args, {}) == old_canonical(actor, args, {})


def test_canonical_falls_back_for_what_only_json_writes() -> None:
    class Tag(str):
        pass

    args = [datetime(2026, 1, 2, 3, 4, 5), Tag("x"), {1: "int key"}, 2**80, float("nan")]
    assert _canonical("a", args, {}) == old_canonical("a", args, {})


def test_dramatiq_encoder_round_trip_and_errors() -> None:
    enc = FastJSONEncoder()
    data = {"args": [1, [{"task": 1, "result": {"x": float("nan"), "y": 2**70}}]], "s": "é"}
    raw = enc.encode(data)
    assert raw == json.dumps(data, separators=(",", ":")).encode("utf-8")
    assert same(enc.decode(raw), json.loads(raw))
    for bad in (b"{", b"\xff\xfe", "[1]".encode("utf-16")):
        with pytest.raises(DecodeError):
            enc.decode(bad)


def test_a_result_batch_takes_the_fast_path() -> None:
    """What the speed-up is for: an echo batch, its signature and its Dramatiq message
    are written by orjson (no `null`, no exponent; hex ids and reply subjects do
    not look like numbers)."""
    results = [
        TaskResult(
            task=i,
            status="done",
            result={"i": i, "f": 0.25},
            reply=f"$JS.ACK.ns_job_7.processors.1.{i + 1}.{i + 1}.1764900000000000000.0",
        )
        for i in range(250)
    ]
    items = [wire_item(r) for r in results]
    args = (7, items, "_INBOX.3e5f9a0b1c2d.17")
    assert jsontext.fast_dumps([PROCESS_RESULTS, args, {}], sort_keys=True) is not None
    message = _signed(RESULTS_QUEUE, PROCESS_RESULTS, args)
    assert jsontext.fast_dumps(message.asdict()) is not None
