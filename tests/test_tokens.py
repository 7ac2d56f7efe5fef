"""`jobsys token create|list|revoke` as users run them: the token shown once, only its hash
stored, one-line refusals."""

from __future__ import annotations

import json
import uuid

from jobsys.pg.db import connection
from jobsys.server.tokens import fingerprint_of, token_hash
from tests.test_cli import jobsys_cli


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_a_token_is_printed_once_and_only_its_hash_is_stored() -> None:
    name = unique("ci")
    made = jobsys_cli(
        "token",
        "create",
        "--name",
        name,
        "--scope",
        "submit",
        "--pipelines",
        "echo,sha256",
        "--expires-days",
        "30",
        "--json",
        check=True,
    )
    shown = json.loads(made.stdout)
    token = shown["token"]
    assert shown["name"] == name and shown["fingerprint"] == fingerprint_of(token)
    assert shown["pipelines"] == ["echo", "sha256"] and shown["expires_at"]
    with connection() as conn:
        row = conn.execute("SELECT * FROM api_tokens WHERE name = %(n)s", {"n": name}).fetchone()
    assert row is not None and bytes(row["token_hash"]) == token_hash(token)
    assert token not in json.dumps({k: str(v) for k, v in row.items()})
    listed = jobsys_cli("token", "list", "--json", check=True)
    assert token not in listed.stdout and token_hash(token).hex() not in listed.stdout
    mine = [t for t in json.loads(listed.stdout) if t["name"] == name]
    assert mine[0]["state"] == "live" and mine[0]["scope"] == "submit"
    table = jobsys_cli("token", "list", check=True).stdout
    assert "ci-" in table and token not in table  # (rich wraps long cells)


def test_plain_create_prints_the_token_alone_on_stdout() -> None:
    name = unique("plain")
    made = jobsys_cli("token", "create", "--name", name, "--scope", "read", check=True)
    token = made.stdout.strip()
    assert token.startswith("jst_") and "\n" not in token
    assert fingerprint_of(token) in made.stderr and "shown only now" in made.stderr


def test_revoke_keeps_the_row_and_frees_the_name() -> None:
    name = unique("gone")
    first = json.loads(
        jobsys_cli(
            "token", "create", "--name", name, "--scope", "read", "--json", check=True
        ).stdout
    )
    again = jobsys_cli("token", "create", "--name", name, "--scope", "read")
    assert again.returncode == 1 and f"a live token named '{name}' exists" in again.stderr
    revoked = jobsys_cli("token", "revoke", name, check=True)
    assert first["fingerprint"] in revoked.stdout
    second = jobsys_cli("token", "create", "--name", name, "--scope", "read", "--json", check=True)
    assert json.loads(second.stdout)["fingerprint"] != first["fingerprint"]
    states = [
        t["state"]
        for t in json.loads(jobsys_cli("token", "list", "--json").stdout)
        if t["name"] == name
    ]
    assert sorted(states) == ["live", "revoked"]


def test_token_mistakes_are_one_line_and_a_nonzero_exit() -> None:
    for args, message in [
        (("revoke", unique("nobody")), "no live token named"),
        (("create", "--name", unique("p"), "--scope", "process"), "must name the pipelines"),
        (
            ("create", "--name", unique("a"), "--scope", "admin", "--pipelines", "echo"),
            "reaches every pipeline",
        ),
        (("create", "--name", "bad name", "--scope", "read"), "name: 1 to 64"),
        (("create", "--name", unique("s"), "--scope", "root"), "Invalid value"),
    ]:
        proc = jobsys_cli("token", *args)
        assert proc.returncode != 0, args
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
