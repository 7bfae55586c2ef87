"""tooti.admin_cli, in-process via main(argv) and as a subprocess.

These tests are synchronous on purpose: each CLI command calls trio.run().
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from tests._pg import raw_rows
from tooti import admin_cli
from tooti.p2p import keys
from tooti.store import UsageRow, open_store
from tooti.store._namespaces import fingerprint

REPO = Path(__file__).resolve().parent.parent
KEY_RE = re.compile(r"^tt-[0-9a-z]{10}-[0-9A-Za-z]{43}$")


def store_call(url: str, method: str, *args, **kwargs):
    """Run one store method from synchronous test code."""

    async def run():
        store = await open_store(url)
        try:
            return await getattr(store, method)(*args, **kwargs)
        finally:
            await store.aclose()

    return trio.run(run)


def cli(capsys, url: str, *argv: str) -> tuple[int, str, str]:
    code = admin_cli.main([*argv, "--database-url", url])
    out, err = capsys.readouterr()
    return code, out, err


def admits(url: str, namespace: str, private: str) -> bool:
    verifier = store_call(url, "namespace_verifier", namespace)
    if verifier is None:
        return False
    nonce = os.urandom(32)
    sig = keys.prove_namespace(private, nonce, namespace, b"node", b"gw")
    return verifier.check_proof(sig, nonce, b"node", b"gw")


def test_namespace_commands(capsys, store_url):
    code, out, err = cli(
        capsys,
        store_url,
        "namespace",
        "create",
        "team",
        "--owner",
        "ann",
        "--allow-peer",
        "peer-1",
        "--allow-peer",
        "peer-2",
    )
    assert code == 0
    private = out.strip()
    assert len(out.splitlines()) == 1 and private.startswith("tooti-ns-key-v1:")
    assert "only once" in err and "fingerprint: sha256:" in err
    assert admits(store_url, "team", private)
    assert store_call(store_url, "namespace_verifier", "team").allowed_peers == ("peer-1", "peer-2")

    code, out, err = cli(capsys, store_url, "namespace", "list")
    public = keys.public_of(private, keys.NAMESPACE_PRIVATE, keys.NAMESPACE_PUBLIC)
    assert code == 0 and "team" in out and "ann" in out and "peer-1,peer-2" in out
    assert fingerprint(public) in out
    assert private not in out + err and private.split(":")[1] not in out + err

    code, out, err = cli(capsys, store_url, "namespace", "create", "team")
    assert code == 1 and "namespace 'team' already exists" in err

    code, out, err = cli(capsys, store_url, "namespace", "rotate", "team")
    new_private = out.strip()
    assert code == 0 and new_private != private and "only once" in err
    assert not admits(store_url, "team", private)
    assert admits(store_url, "team", new_private)

    code, out, err = cli(capsys, store_url, "namespace", "rotate", "team", "--grace", "10m")
    newest = out.strip()
    assert code == 0 and "600s" in err
    assert admits(store_url, "team", new_private) and admits(store_url, "team", newest)
    code, out, _ = cli(capsys, store_url, "namespace", "list")
    assert "(until " in out

    assert cli(capsys, store_url, "namespace", "rotate", "missing")[0] == 1
    assert cli(capsys, store_url, "namespace", "delete", "team")[0] == 0
    assert cli(capsys, store_url, "namespace", "delete", "team")[0] == 1
    assert not admits(store_url, "team", newest)


def test_namespace_key_file_and_registered_public_key(capsys, tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    key_file = tmp_path / "acme.key"
    code, out, err = cli(capsys, url, "namespace", "create", "acme", "--key-file", str(key_file))
    assert code == 0 and out == "" and str(key_file) in err
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    private = key_file.read_text().strip()
    assert admits(url, "acme", private) and private not in err
    # never overwrites a key file
    code, _, err = cli(capsys, url, "namespace", "rotate", "acme", "--key-file", str(key_file))
    assert code == 2 and "exists" in err and key_file.read_text().strip() == private
    # a failed create leaves no key file behind
    other = tmp_path / "other.key"
    assert cli(capsys, url, "namespace", "create", "acme", "--key-file", str(other))[0] == 1
    assert not other.exists()

    # a key pair made elsewhere: only the public half ever reaches the gateway host
    own = keys.generate(keys.NAMESPACE_PRIVATE)
    public = keys.public_of(own, keys.NAMESPACE_PRIVATE, keys.NAMESPACE_PUBLIC)
    code, out, err = cli(capsys, url, "namespace", "create", "own", "--public-key", public)
    assert code == 0 and out == "" and fingerprint(public) in err
    assert admits(url, "own", own)
    code, _, err = cli(capsys, url, "namespace", "create", "bad", "--public-key", own)
    assert code == 2 and "tooti-ns-pub-v1" in err and own not in err
    code, _, _ = cli(capsys, url, "namespace", "create", "bad", "--public-key", public, "--key-file", "x")
    assert code == 2
    assert store_call(url, "get_namespace", "bad") is None


def test_apikey_commands(capsys, store_url):
    code, out, err = cli(
        capsys,
        store_url,
        "apikey",
        "create",
        "--owner",
        "bob",
        "--namespace",
        "team",
        "--model",
        "llama",
        "--model",
        "qwen",
        "--expires-in",
        "30d",
    )
    assert code == 0 and "only once" in err
    plaintext = out.strip()
    assert KEY_RE.match(plaintext)
    key = store_call(store_url, "verify_api_key", plaintext)
    assert key.owner == "bob" and key.namespaces == ("team",) and key.models == ("llama", "qwen")
    expected = datetime.now(UTC) + timedelta(days=30)
    assert abs((key.expires_at - expected).total_seconds()) < 60

    code, out, err = cli(capsys, store_url, "apikey", "list")
    assert code == 0 and key.prefix in out and "active" in out
    assert plaintext.rsplit("-", 1)[1] not in out

    assert cli(capsys, store_url, "apikey", "revoke", key.prefix)[0] == 0
    assert cli(capsys, store_url, "apikey", "revoke", key.prefix)[0] == 1
    assert store_call(store_url, "verify_api_key", plaintext).is_revoked()
    code, out, _ = cli(capsys, store_url, "apikey", "list")
    assert "revoked" in out


def test_bad_duration_is_a_usage_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        cli(capsys, f"sqlite:///{tmp_path / 'x.db'}", "apikey", "create", "--expires-in", "soon")
    assert info.value.code == 2


def test_db_migrate(capsys, store_url):
    code, out, _ = cli(capsys, store_url, "db", "migrate")
    assert code == 0 and out.strip() == "applied migrations: 1, 2, 3"
    code, out, _ = cli(capsys, store_url, "db", "migrate")
    assert code == 0 and out.strip() == "schema up to date"


def test_two_processes_migrate_one_database_at_once(store_url):
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOOTI_DATABASE_URL": store_url}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tooti.admin_cli", "db", "migrate"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=60), p.stdout.read().strip(), p.stderr.read()) for p in procs]
    assert [code for code, _, _ in results] == [0, 0], results
    assert sorted(out for _, out, _ in results) == ["applied migrations: 1, 2, 3", "schema up to date"]
    assert len(raw_rows(store_url, "SELECT version FROM schema_migrations")) == 3


def test_usage_report(capsys, store_url):
    day1 = datetime(2026, 3, 1, 10, tzinfo=UTC)
    rows = [
        UsageRow("r1", day1, "k1", "ns", "peer", "llama", 10, 1, 5, 200, "gw"),
        UsageRow("r2", day1, "k1", "ns", "peer", "llama", 20, 2, 5, 200, "gw"),
        UsageRow("r3", day1 + timedelta(days=1), "k2", "ns", "peer", "qwen", 5, 5, 5, 200, "gw"),
    ]
    store_call(store_url, "record_usage", rows)

    code, out, _ = cli(capsys, store_url, "usage", "--json")
    assert code == 0
    assert json.loads(out) == [
        {
            "key_prefix": "k1",
            "day": "2026-03-01",
            "model": "llama",
            "requests": 2,
            "prompt_tokens": 30,
            "completion_tokens": 3,
            "total_tokens": 33,
            "flagged_requests": 0,
        },
        {
            "key_prefix": "k2",
            "day": "2026-03-02",
            "model": "qwen",
            "requests": 1,
            "prompt_tokens": 5,
            "completion_tokens": 5,
            "total_tokens": 10,
            "flagged_requests": 0,
        },
    ]
    code, out, _ = cli(capsys, store_url, "usage")
    lines = out.splitlines()
    assert lines[0].split() == ["DAY", "KEY", "MODEL", "REQUESTS", "PROMPT", "COMPLETION", "FLAGGED"]
    assert code == 0 and lines[1].split() == ["2026-03-01", "k1", "llama", "2", "30", "3", "0"]
    code, out, _ = cli(capsys, store_url, "usage", "--key", "k2", "--json")
    assert [r["key_prefix"] for r in json.loads(out)] == ["k2"]
    code, out, _ = cli(capsys, store_url, "usage", "--since", "2026-03-02", "--json")
    assert [r["day"] for r in json.loads(out)] == ["2026-03-02"]


def test_database_url_from_environment(capsys, monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("TOOTI_DATABASE_URL", url)
    assert admin_cli.main(["apikey", "create"]) == 0
    plaintext = capsys.readouterr().out.strip()
    assert store_call(url, "verify_api_key", plaintext) is not None


def test_unreachable_database_exit_code(capsys, tmp_path):
    code, _, err = cli(capsys, f"sqlite:///{tmp_path}/no/such/dir.db", "namespace", "list")
    assert code == 3 and "unavailable" in err


def test_register_sets_func_on_every_command():
    import argparse

    parser = argparse.ArgumentParser()
    admin_cli.register(parser.add_subparsers(dest="command"))
    for argv in (["namespace", "list"], ["apikey", "revoke", "p"], ["db", "migrate"], ["usage"]):
        assert callable(parser.parse_args(argv).func)


def test_subprocess_entry_point(tmp_path):
    url = f"sqlite:///{tmp_path / 'sub.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOOTI_DATABASE_URL": url}
    run = subprocess.run(
        [sys.executable, "-m", "tooti.admin_cli", "apikey", "create", "--owner", "ci"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    plaintext = run.stdout.strip()
    assert KEY_RE.match(plaintext) and "only once" in run.stderr
    listing = subprocess.run(
        [sys.executable, "-m", "tooti.admin_cli", "apikey", "list"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert listing.returncode == 0 and "ci" in listing.stdout
    assert plaintext not in listing.stdout


def test_usage_report_survives_hostile_rows(capsys, store_url):
    """Rows with escape codes, NUL and absurd figures (written directly, as by an older
    gateway): `tooti usage` prints sane numbers and no control character, never a traceback."""
    from tests.test_store import exec_raw

    store_call(store_url, "migrate")
    for n, model in enumerate(("\x1b[2J\x1b]0;pwned\x07", "fine")):
        exec_raw(
            store_url,
            "INSERT INTO usage (request_id, at, key_prefix, namespace, node_peer_id, model,"
            " prompt_tokens, completion_tokens, latency_ms, status, gateway_id) VALUES"
            f" ('h{n}', '2026-03-01T00:00:00.000000+00:00', 'k', '', 'p', '{model}',"
            f" {2**63 - 1}, {2**63 - 1}, 1, 200, 'g')",
        )
    store_call(
        store_url,
        "record_usage",
        [UsageRow("h2", datetime.now(UTC), "k", "", "p", "m\x00", 2**63, -1, 1, 200)],
    )
    code, out, err = cli(capsys, store_url, "usage")
    assert code == 0, err
    assert not any(ch in out for ch in "\x1b\x07\x00")
    assert "1000000000" in out
    code, out, err = cli(capsys, store_url, "usage", "--json")
    assert code == 0 and all(r["prompt_tokens"] <= 10**9 for r in json.loads(out))
