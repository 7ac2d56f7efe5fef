"""The HTTP API's rules that need no server: scopes, token shapes, upload lines, problem
details, the OpenAPI document, refusals before any lookup, exposure, redaction."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import anyio
import httpx
import pytest

from jobsys.api.items import read_items
from jobsys.display import redact
from jobsys.errors import InvalidInput, JobBusy, JobNotFinal, JobNotFound, LedgerPruned
from jobsys.server.app import create_app, openapi_document
from jobsys.server.limits import RateLimited
from jobsys.server.problems import classify
from jobsys.server.run import check_exposure
from jobsys.server.tokens import (
    GRANTS,
    TOKEN_RE,
    Forbidden,
    Scope,
    Unauthenticated,
    authenticate,
    check_new_token,
    fingerprint_of,
    new_token,
    parse_pipelines,
    token_hash,
)
from jobsys.server.upload import LineSplitter, checked_lines
from jobsys.server.work import shown_pipelines


def test_scopes_nest_admin_over_submit_over_read_and_process_stands_apart() -> None:
    assert GRANTS[Scope.READ] == {Scope.READ}
    assert GRANTS[Scope.READ] < GRANTS[Scope.SUBMIT] < GRANTS[Scope.ADMIN]
    assert GRANTS[Scope.PROCESS] == {Scope.PROCESS}
    assert all(Scope.PROCESS not in GRANTS[s] for s in (Scope.READ, Scope.SUBMIT, Scope.ADMIN))


def test_a_new_token_is_random_of_one_shape_and_named_by_its_hash() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100 and all(TOKEN_RE.match(t) for t in tokens)
    token = tokens.pop()
    assert token_hash(token) == hashlib.sha256(token.encode()).digest()
    assert fingerprint_of(token) == token_hash(token).hex()[:16]
    assert token not in fingerprint_of(token)


@pytest.mark.parametrize("presented", ["", "x", "jst_short", "Bearer jst_", "jst_" + "!" * 43])
def test_a_token_of_the_wrong_shape_is_refused_without_a_database(presented: str) -> None:
    # The fast tier's database URL points at a closed port: a lookup would fail otherwise.
    with pytest.raises(Unauthenticated, match="not a jobsys token"):
        authenticate(presented)


@pytest.mark.parametrize(
    ("name", "scope", "pipelines", "days", "message"),
    [
        ("-bad", "read", None, None, "name: 1 to 64"),
        ("x" * 65, "read", None, None, "name: 1 to 64"),
        ("ok", "root", None, None, "scope: 'root' is not one of"),
        ("ok", "process", None, None, "a process token must name the pipelines"),
        ("ok", "admin", ("echo",), None, "an admin token reaches every pipeline"),
        ("ok", "read", None, 0, "expires-days"),
        ("ok", "read", None, 10_000, "expires-days"),
    ],
)
def test_what_a_new_token_may_not_be(
    name: str, scope: str, pipelines: tuple[str, ...] | None, days: float | None, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        check_new_token(name, scope, pipelines, days)


def test_pipelines_are_a_comma_list_of_names() -> None:
    assert parse_pipelines(" a, b ,a") == ("a", "b")
    assert parse_pipelines(None) is None
    with pytest.raises(InvalidInput):
        parse_pipelines(" , ")


def _split(data: bytes, cut: int) -> list[tuple[int, bytes]]:
    splitter = LineSplitter(max_line=50)
    lines = []
    for start in range(0, len(data), cut):
        lines.extend(splitter.feed(data[start : start + cut]))
    return lines + list(splitter.end())


def test_upload_lines_are_the_same_however_the_body_is_cut() -> None:
    data = b'{"a": 1}\r\n\n{"b": 2}\n  \n{"c": 3}'
    expected = [(1, b'{"a": 1}'), (2, b""), (3, b'{"b": 2}'), (4, b"  "), (5, b'{"c": 3}')]
    for cut in (1, 2, 3, 7, 100):
        assert _split(data, cut) == expected
    assert [str(i) for i in checked_lines(iter(expected))] == ['{"a": 1}', '{"b": 2}', '{"c": 3}']
    assert [i.where for i in checked_lines(iter(expected))] == ["line 1", "line 3", "line 5"]


def test_an_over_long_upload_line_is_reported_as_an_items_file_reports_it(tmp_path: Path) -> None:
    rng = random.Random(7)
    for size in (1_000_001, 1_000_002, 1_000_003, 1_500_000):
        for ending in (b"\n", b"\r\n"):
            data = b'{"a": 1}\n' + b"x" * size + ending + b'{"b": 2}\n'
            splitter = LineSplitter()
            with pytest.raises(InvalidInput) as from_upload:
                start = 0
                while start < len(data):
                    step = rng.randint(1, 300_000)
                    list(checked_lines(splitter.feed(data[start : start + step])))
                    start += step
            said = f"line 2: line is {size:,} bytes, over the 1,000,000 limit"
            assert str(from_upload.value) == said
            if ending == b"\n":
                # (An items file's reader counts a "\r" that ends its first read buffer.)
                path = tmp_path / "items.jsonl"
                path.write_bytes(data)
                with pytest.raises(InvalidInput) as from_file:
                    list(read_items(path))
                assert str(from_file.value).replace(f"{path}:", "line ") == said


def test_each_failure_has_its_status() -> None:
    cases = [
        (Unauthenticated("x"), 401),
        (Forbidden("x"), 403),
        (JobNotFound(3), 404),
        (JobNotFinal(3, "started", "retried"), 409),
        (
            JobBusy(
                3, 10.0, [(42, "pid 42 (jobsys worker 7, local, idle in transaction for 12 s)")]
            ),
            409,
        ),
        (LedgerPruned(3, None), 410),
        (InvalidInput("x"), 422),
        (RateLimited("x", 3), 429),
    ]
    for exc, status in cases:
        known = classify(exc)
        assert known is not None and known[0] == status and known[2] == str(exc)
    assert classify(ValueError("a bug")) is None


def test_every_operation_of_the_document_says_its_scope_and_needs_a_bearer_token() -> None:
    doc = openapi_document(create_app())
    seen = set()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            seen.add(op["x-jobsys-scope"])
            if path == "/healthz":
                assert op["x-jobsys-scope"] == "none" and op["security"] == []
                continue
            assert op["security"] == [{"bearer": []}], (method, path)
            assert op["responses"]["401"]["content"]["application/problem+json"]
    assert seen == {"none", "any", "read", "submit", "admin", "process"}
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_a_call_without_a_token_is_a_401_problem_before_any_route_runs() -> None:
    async def calls() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [
                await client.request(method, path, headers={"Authorization": "Bearer nope"})
                for method, path in [("GET", "/api/jobs"), ("POST", "/api/jobs"),
                                     ("GET", "/nowhere"), ("GET", "/openapi.json")]
            ]  # fmt: skip

    for answer in anyio.run(calls):
        assert answer.status_code == 401
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.headers["www-authenticate"] == 'Bearer realm="jobsys"'
        assert answer.headers["cache-control"] == "no-store"
        assert answer.json()["detail"] == "not a jobsys token"


def test_serving_beyond_loopback_needs_tls_or_a_word_that_a_proxy_does_it() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.5"):
        check_exposure(host, tls=False, plain_http=False)
    check_exposure("0.0.0.0", tls=True, plain_http=False)
    check_exposure("10.0.0.5", tls=False, plain_http=True)
    with pytest.raises(InvalidInput, match="clear text"):
        check_exposure("0.0.0.0", tls=False, plain_http=False)


def test_a_token_is_masked_wherever_a_line_quotes_it() -> None:
    token = new_token()
    for line in (f"GET /api/jobs?access_token={token} HTTP/1.1", f"Authorization: Bearer {token}",
                 f"path /api/{token}/x"):  # fmt: skip
        assert token not in redact(line)
    assert redact("send Authorization: Bearer TOKEN") == "send Authorization: Bearer TOKEN"


def test_a_remote_processor_shows_what_its_token_lets_it_serve() -> None:
    names, modules = ["echo", "sha256"], ["mypipes"]
    # An unlimited token: what the processor says.
    assert shown_pipelines(names, modules, None) == names
    # A limited one: the names it reaches, and its pipelines the modules hold.
    limited = ["echo", "mypipes:double", "mypipes.sub:x", "other:y"]
    assert shown_pipelines(names, modules, limited) == ["echo", "mypipes.sub:x", "mypipes:double"]
    assert shown_pipelines(names, [], ["mypipes:double"]) == []
