"""Validation at the boundaries, with generated input: an items line is an object or a
one-line error naming its place; a result item is well formed or set aside with a
reason. No server needed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobsys.api.items import parse_item
from jobsys.errors import InvalidInput
from jobsys.models import ResultBatch
from jobsys.storable import MAX_ERROR_CHARS

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_every_json_object_line_is_accepted_and_kept_verbatim(obj: dict[str, Any]) -> None:
    line = json.dumps(obj, ensure_ascii=False)
    assert parse_item(line.encode(), "f:1") == line


@given(json_values.filter(lambda v: not isinstance(v, dict)))
def test_every_non_object_line_is_rejected_with_its_place(value: Any) -> None:
    with pytest.raises(InvalidInput, match=r"^f:7: expected a JSON object"):
        parse_item(json.dumps(value).encode(), "f:7")


@given(st.binary(max_size=64))
def test_arbitrary_bytes_either_parse_to_an_object_or_fail_cleanly(raw: bytes) -> None:
    try:
        text = parse_item(raw, "f:1")
    except InvalidInput as exc:
        assert str(exc).startswith("f:1: ")
    else:
        assert isinstance(json.loads(text), dict)


_GOOD = {"task": 0, "status": "done", "result": {}, "reply": "$JS.ACK.s.c.1.1.1.1.0"}


@given(
    st.dictionaries(
        st.sampled_from(["task", "status", "result", "error", "reply", "deliveries", "x"]),
        json_values,
    )
)
@settings(max_examples=300)
def test_a_result_item_is_either_well_formed_or_set_aside_with_a_reason_never_raises(
    item: dict[str, Any],
) -> None:
    batch = ResultBatch.model_validate({"job_id": 1, "results": [item]})
    assert len(batch.results) + len(batch.rejected) == 1
    if batch.rejected:
        assert batch.rejected[0].reason
        return
    r = batch.results[0]
    assert r.task >= 0 and r.status in {"done", "failed"} and r.reply
    assert (r.status == "failed") == (r.error is not None)
    if r.error is not None:
        assert "\x00" not in r.error and len(r.error) <= MAX_ERROR_CHARS
