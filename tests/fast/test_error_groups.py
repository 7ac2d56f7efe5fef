"""Grouping failures by cause (`jobsys tasks --by-error`): the normaliser. No server."""

from __future__ import annotations

from jobsys.api.error_groups import error_key, normalise_message


def test_what_varies_between_tasks_of_one_cause_is_taken_out() -> None:
    cases = {
        "FileNotFoundError: [Errno 2] No such file or directory: '/data/in/0001.jpg'":
            "FileNotFoundError: [Errno <n>] No such file or directory: '<…>'",
        "cannot open /srv/photos/2024/a b.png for reading":
            "cannot open <path> b.png for reading",
        "KeyError: 'path'": "KeyError: '<…>'",
        'ValueError: invalid literal for int() with base 10: "12x"':
            'ValueError: invalid literal for int() with base <n>: "<…>"',
        "<mypkg.Model object at 0x7f3a2b1c9d30> is not ready":
            "<mypkg.Model object at <addr>> is not ready",
        "GET https://api.example.com/v1/items/123?x=1 returned 503":
            "GET <url> returned <n>",
        "record 3f2504e0-4f89-11d3-9a0c-0305e82c3301 missing":
            "record <uuid> missing",
        "digest 9f86d081884c7d659a2feaa0c55ad015 mismatch": "digest <hex> mismatch",
        "took 12.5 s, limit 10": "took <n> s, limit <n>",
        "row -42 of 1,000,000": "row <n> of <n>",
        "C:\\Users\\me\\file.txt not found": "<path> not found",
        "gave up after 5 deliveries: ConnectionError: service unavailable":
            "gave up after <n> deliveries: ConnectionError: service unavailable",
        "  spaces\n and\tnewlines ": "spaces and newlines",
    }  # fmt: skip
    for text, expected in cases.items():
        assert normalise_message(text) == expected, text


def test_names_and_words_with_digits_are_left_alone() -> None:
    # Identifiers keep their digits: they name a thing, not a value.
    assert normalise_message("sha256 of utf8 text failed") == "sha256 of utf8 text failed"
    assert normalise_message("module jobsys.v2 not found") == "module jobsys.v2 not found"


def test_three_causes_with_varying_details_make_three_groups() -> None:
    failures = []
    for i in range(12):
        failures.append(
            (
                "FileNotFoundError",
                f"FileNotFoundError: [Errno 2] No such file or directory: '/in/{i}.jpg'",
            )
        )
        failures.append(
            (
                "PIL.UnidentifiedImageError",
                f"UnidentifiedImageError: cannot identify image file "
                f"<_io.BytesIO object at 0x7f{i:010x}>",
            )
        )
        failures.append(("KeyError", f"KeyError: 'field_{i}'"))
    assert len({error_key(t, e) for t, e in failures}) == 3


def test_the_type_separates_causes_with_one_message() -> None:
    assert error_key("KeyError", "'x'") != error_key("builtins.LookupError", "'x'")
    assert error_key(None, "timed out after 1 s") == "timed out after <n> s"
    assert error_key(None, None) == ""
