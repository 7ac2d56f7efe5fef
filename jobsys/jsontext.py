"""JSON on the hot paths: orjson's speed, the standard library's exact bytes and values.

Every result batch is JSON several times over: the processor signs it
(`jobsys.dramatiq.signing`) and Dramatiq encodes it; the worker decodes it
and checks its signature. With `json` that was the top line of both
processes' profiles (docs/bench.md, issue 26). (A stored result's text is
still written by json, `jobsys.storable.encode_result`: orjson cannot write
its `", "` and `": "` separators, and the stored text stays as it was.)

orjson is several times faster but writes some things differently: NaN and
Infinity as `null` (json: `NaN`), non-ASCII characters as UTF-8 (json:
`\\uXXXX`), DEL raw, floats below 1e-4 or from 1e16 in another form
(`0.00001`, `1e16`; json: `1e-05`, `1e+16`); and it reads integers
outside 64 bits as floats. A signature is checked against the receiver's
re-encoding of what it decoded, by processes that may run an older version.
So orjson's output is used only when it is provably what `json` would write
(`dumps`), and its parse only when no number could be read differently
(`loads`); everything else takes the standard library, as before.
Subclasses, dataclasses and dates go to `json`, which writes or refuses them
as it always did. (Enums and UUIDs, which orjson writes natively and json
refuses without a `default`, are written as their value: nothing jobsys
sends holds one.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import orjson

_OPTIONS = (
    orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)
_SORTED = _OPTIONS | orjson.OPT_SORT_KEYS
# A number orjson may write unlike json: one in exponent form (`1e16`; json:
# `1e+16`), or one json writes with an exponent and orjson without (`0.00001`;
# json: `1e-05`). A number follows `[`, `,` or `:` (compact output), so with
# digits, `.` and `-` mapped to `0` and those three to `,`, an exponent form
# is `,0...0e`. A regex over the raw output costs more than json itself; this
# is one translate and a search. Strings may match too: that only costs the
# slow path.
_NUMBER_SHAPES = bytes.maketrans(b"0123456789.-E[:", b"000000000000e,,")
_EXPONENT = re.compile(rb",0+e")
_SMALL = b"0.0000"
# A number of 19 digits or more may be an integer outside 64 bits, which
# orjson reads as a float. Numbers follow `[`, `,`, `:` or white space: with
# those mapped to `,` and digits and `-` to `0`, one is `,` and 19 `0`s, a
# plain substring search (a regex over the input would cost more than json).
_DIGIT_SHAPES = bytes.maketrans(b"0123456789-[: \t\r\n", b"00000000000,,,,,,")
_LONG_NUMBER = b"," + b"0" * 19
_LONG_NUMBER_TEXT = re.compile(r"[0-9]{19}")  # text input: not on a hot path


def _refuse(value: Any) -> Any:
    # Whatever orjson does not write natively goes to json, which decides.
    raise TypeError


def fast_dumps(value: Any, sort_keys: bool = False) -> bytes | None:
    """orjson's bytes for `value` if they are exactly those of
    ``json.dumps(value, separators=(",", ":"), sort_keys=sort_keys)`` (ASCII
    escapes, NaN allowed), else None: then the caller uses json."""
    try:
        out = orjson.dumps(value, default=_refuse, option=_SORTED if sort_keys else _OPTIONS)
    except TypeError:  # orjson.JSONEncodeError is one: unsupported type, big int, surrogate
        return None
    # `null` may be a NaN or an Infinity; non-ASCII and DEL json escapes.
    if not out.isascii() or b"null" in out or b"\x7f" in out or _SMALL in out:
        return None
    if _EXPONENT.search((b"," + out).translate(_NUMBER_SHAPES)):
        return None
    return out


def dumps(value: Any, sort_keys: bool = False, default: Any = None) -> bytes:
    """``json.dumps(value, separators=(",", ":"), sort_keys=sort_keys,
    default=default).encode()``, byte for byte; fast when orjson can be sure."""
    out = fast_dumps(value, sort_keys)
    if out is not None:
        return out
    return json.dumps(value, separators=(",", ":"), sort_keys=sort_keys, default=default).encode(
        "utf-8"
    )


def loads(data: bytes | str, fallback: Callable[[Any], Any] = json.loads) -> Any:
    """``fallback(data)`` (json.loads), the same value (NaN, big integers and all)
    and the same errors; fast when orjson can read it exactly (valid UTF-8, strict
    JSON, no number it would read differently)."""
    if isinstance(data, str):
        risky = _LONG_NUMBER_TEXT.search(data) is not None
    else:
        risky = _LONG_NUMBER in (b"," + data).translate(_DIGIT_SHAPES)
    if not risky:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # NaN, Infinity, lone surrogates, bad input: json decides, and says why
    return fallback(data)
