"""What jobsys prints and logs never shows a credential, and errors are one line. No server."""

from __future__ import annotations

import json
import logging

import pytest

from jobsys.display import host_port, nats_servers, one_line, printable, redact, safe_json
from jobsys.logs import JsonFormatter, TextFormatter

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("nats://worker:s3cr3t-Pa55@h:4222", "nats://worker:***@h:4222"),
        ("tls://a:s3cr3t-Pa55@h1:4222,tls://b:s3cr3t-Pa55@h2:4222",
         "tls://a:***@h1:4222,tls://b:***@h2:4222"),
        # A NATS token is the user part alone.
        ("nats://s3cr3t-Pa55@h:4222", "nats://***@h:4222"),
        ("redis://:s3cr3t-Pa55@h:6379/0", "redis://:***@h:6379/0"),
        # An unescaped '@' in a password: everything up to the last '@' is hidden.
        ("rediss://w:s3cr3t@Pa55@h:6380/0", "rediss://w:***@h:6380/0"),
        ("postgresql://u:s3cr3t-Pa55@h/db?sslmode=require",
         "postgresql://u:***@h/db?sslmode=require"),
        ("postgresql://u@h/db?password=s3cr3t-Pa55&sslmode=disable",
         "postgresql://u@h/db?password=***&sslmode=disable"),
        ("host=h user=u password='s3cr3t Pa55' dbname=x", "host=h user=u password=*** dbname=x"),
        ('missing "=" after "postgresql//u:s3cr3t-Pa55@h/x" in connection info string',
         'missing "=" after "postgresql//u:***@h/x" in connection info string'),
        # A user name alone is no secret outside NATS.
        ("postgresql://postgres@h:5432/jobsys", "postgresql://postgres@h:5432/jobsys"),
    ],
)  # fmt: skip
def test_redact_hides_passwords_tokens_and_conninfo_secrets(text: str, shown: str) -> None:
    assert redact(text) == shown
    assert one_line(text) == shown


@pytest.mark.parametrize("formatter", [TextFormatter, JsonFormatter])
def test_log_lines_hide_url_passwords_and_the_signing_secret(
    formatter: type[TextFormatter] | type[JsonFormatter],
) -> None:
    signing = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
    record = logging.makeLogRecord(
        {
            "name": "psycopg.pool",
            "levelno": logging.WARNING,
            "levelname": "WARNING",
            "msg": "error connecting: %s",
            "args": (f'missing "=" after "postgresql//u:{SECRET}@h/x"',),
            "nats_url": f"nats://w:{SECRET}@h:4222",
            "detail": f"secret={signing}",
            "echo": f"signed with {signing}",
        }
    )
    line = formatter([signing]).format(record)
    assert SECRET not in line and signing not in line
    assert "postgresql//u:***@h/x" in line and "nats://w:***@h:4222" in line


def test_url_helpers_read_the_first_server_and_a_socket_dir() -> None:
    url = "postgresql://u:p%40ss@localhost/db?host=/var/run/postgresql&sslmode=disable"
    assert host_port(url, 5432) == ("/var/run/postgresql", 5432)
    assert host_port("nats://a:1,nats://b:2", 4222) == ("a", 1)
    assert nats_servers(" nats://a:1, nats://b:2 ") == ["nats://a:1", "nats://b:2"]


def test_one_line_is_the_first_line_cut_short() -> None:
    assert one_line(ValueError("first\nsecond")) == "first"
    assert one_line("x" * 500).endswith("...") and len(one_line("x" * 500)) == 160
    assert one_line(TimeoutError()) == "timed out"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://user:S3cretPW@h:9/hook?token=T0k&api_key=K3y&page=2",
         "http://user:***@h:9/hook?token=***&api_key=***&page=2"),
        # A user part alone stands for a token in an http(s) URL.
        ("https://ghp_T0ken@hooks.example.com/x", "https://***@hooks.example.com/x"),
        ("https://h/x?X-Amz-Signature=abc&X-Amz-Credential=def&sig=1&monkey=2&bypass=3",
         "https://h/x?X-Amz-Signature=***&X-Amz-Credential=***&sig=***&monkey=2&bypass=3"),
        ("https://h/x?access_token=a#frag", "https://h/x?access_token=***#frag"),
    ],
)  # fmt: skip
def test_redact_hides_the_credentials_of_a_hook_url(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_printable_escapes_what_a_terminal_would_act_on() -> None:
    assert printable("a\x1b[2J\x1b[31mEVIL") == "a\\x1b[2J\\x1b[31mEVIL"
    assert printable("l1\nl2\r\tx\x7f\x9b") == "l1\\nl2\\r\\tx\\x7f\\x9b"
    assert printable("ab\u202ecd\u2066") == "ab\\u202ecd\\u2066"
    assert printable("bad\udcff") == "bad\\udcff"
    assert printable("é [red] \\ ok") == "é [red] \\ ok"
    assert one_line("x\x1by") == "x\\x1by"


def test_safe_json_is_the_same_json_with_nothing_raw_a_terminal_acts_on() -> None:
    value = {"name": "a\x1b\x7f\x9b\u202e é"}
    text = safe_json(json.dumps(value, ensure_ascii=False))
    assert json.loads(text) == value
    assert not any(c in text for c in "\x1b\x7f\x9b\u202e") and "é" in text
