"""Completion hook rules without a server: what a target may be, which receiver gets
which headers, and the "send it again" subject of a result batch."""

from __future__ import annotations

import pytest

from jobsys.errors import InvalidInput
from jobsys.hooks.target import check_target
from jobsys.nats.subjects import again_subject, serial_of_again, serial_of_confirm
from jobsys.settings import Settings, origin_of, parse_hook_headers


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("http://%00/", "not a host name or IP address"),
        ("http://exa%20mple.com/x", "not a host name or IP address"),
        ("http:///x", "has no host"),
        ("http://-bad-.com/", "not a host name or IP address"),
    ],
)
def test_a_hook_url_needs_a_real_host(target: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        check_target(target)


@pytest.mark.parametrize(
    "target",
    ["http://127.0.0.1:9/x", "http://[::1]:8080/x", "https://hooks.example.com/x",
     "http://my_service:8000/hook", "https://bücher.example/x"],
)  # fmt: skip
def test_hosts_names_and_addresses_are_targets(target: str) -> None:
    assert check_target(target).kind == "http"


def test_a_target_is_shown_without_its_credentials_and_kept_whole() -> None:
    hook = check_target("https://u:pw@h.example/x?token=t&page=1")
    assert hook.target == "https://u:pw@h.example/x?token=t&page=1"
    assert hook.shown == "https://u:***@h.example/x?token=***&page=1"


def test_hook_headers_go_to_their_origin_only() -> None:
    headers = parse_hook_headers('{"HTTPS://Hooks.Example.com:443": {"Authorization": "B x"}}')
    assert headers == {"https://hooks.example.com": {"Authorization": "B x"}}
    assert origin_of("https://hooks.example.com/a/b?c") in headers
    assert origin_of("https://hooks.example.com:8443/a") not in headers
    assert origin_of("http://hooks.example.com/a") not in headers


@pytest.mark.parametrize(
    "text", ["[]", "{", '{"ftp://h": {}}', '{"https://h": {"Bad Name": "x"}}',
             '{"https://h": {"X": "a\\r\\nInjected: 1"}}'],
)  # fmt: skip
def test_bad_hook_headers_are_refused_without_their_values(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_hook_headers(text)
    assert "Injected" not in str(caught.value)
    with pytest.raises(ValueError):
        Settings(hook_headers=text)  # type: ignore[arg-type]


def test_the_again_subject_names_its_batch_and_is_not_a_confirmation() -> None:
    subject = again_subject("_INBOX.abc.17")
    assert subject == "_INBOX.abc.17.again"
    assert serial_of_again(subject) == 17
    assert serial_of_again("_INBOX.abc.17") is None
    assert serial_of_confirm(subject) is None
