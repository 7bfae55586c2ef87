"""Tests for tooti.config: strict YAML loading with file/line/key problems."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.identity_utils import save_identity

from tooti.config import (
    ConfigError,
    GatewayConfig,
    NodeConfig,
    Problem,
    check_file,
    load_gateway_config,
    load_node_config,
    run_check,
)
from tooti.p2p import keys

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "config"
CONFIGS = ROOT / "configs"
PEER = "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5"
BOOTSTRAP = f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}"
SECRET = "s3cr3t-VALUE-do-not-print"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's shell may set these; tests must not depend on it.
    for name in ("TOOTI_DATABASE_URL", "TOOTI_TEST_SURELY_UNSET"):
        monkeypatch.delenv(name, raising=False)


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


NETWORK_ID = "tooti-net-pub-v1:d8SsgN1fa5sREd4oqTbPYELm05J05RdZRklkLuQaoEo"


def node_yaml(node_extra: str = "", rest: str = "") -> str:
    return (
        "node:\n  identity_key_file: node.key\n"
        + node_extra
        + f"network:\n  id: {NETWORK_ID}\n  bootstrap: [{BOOTSTRAP}]\nbackend:\n  type: loopback\n"
        + rest
    )


# --------------------------------------------------------------------------
# Good files


def test_minimal_node_gets_defaults() -> None:
    cfg = load_node_config(DATA / "good_node_minimal.yaml")
    assert cfg.path == DATA / "good_node_minimal.yaml"
    assert cfg.node.name == socket.gethostname()
    assert cfg.node.identity_key_file == DATA / "node.key"  # relative to the file
    assert cfg.node.namespace == ""
    assert cfg.node.namespace_key is None
    assert cfg.node.max_concurrency == 4
    assert cfg.network.bootstrap == (BOOTSTRAP,)
    assert cfg.network.listen == ()
    assert cfg.backend.type == "loopback"
    assert cfg.backend.base_url is None
    assert cfg.models.allow is None
    assert cfg.models.refresh_sec == 30.0
    assert cfg.heartbeat.interval_sec == 5.0
    assert (cfg.timeouts.connect_sec, cfg.timeouts.first_token_sec, cfg.timeouts.total_sec) == (
        5.0,
        60.0,
        600.0,
    )


def test_full_node_values_and_env_expansion(monkeypatch: pytest.MonkeyPatch) -> None:
    key = keys.generate(keys.NAMESPACE_PRIVATE)
    monkeypatch.setenv("TOOTI_TEST_NS_KEY_BODY", key.split(":", 1)[1])
    monkeypatch.setenv("TOOTI_TEST_API_KEY", SECRET)
    cfg = load_node_config(DATA / "good_node_full.yaml")
    assert cfg.node.name == "box-7"
    assert cfg.node.namespace == "team_a-1"
    assert cfg.node.namespace_key == key  # embedded reference
    assert cfg.node.max_concurrency == 16
    assert len(cfg.network.bootstrap) == 2
    assert cfg.network.listen == ("/ip4/0.0.0.0/tcp/4002", "/ip6/::/tcp/4002")
    assert cfg.backend.type == "openai"
    assert cfg.backend.base_url == "https://inference.example.org:8443/v1"
    assert cfg.backend.api_key == SECRET
    assert cfg.models.allow == ("llama3", "qwen2.5:7b")
    assert cfg.models.refresh_sec == 2.5
    assert cfg.heartbeat.interval_sec == 1.0 and isinstance(cfg.heartbeat.interval_sec, float)
    assert cfg.timeouts.first_token_sec == 30.5
    assert SECRET not in repr(cfg)  # secrets are kept out of repr


def test_gateway_section_alone_gives_all_defaults() -> None:
    cfg = load_gateway_config(DATA / "good_gateway_minimal.yaml")
    default = GatewayConfig()
    assert cfg.gateway.identity_key_file == DATA / "gateway.key"
    assert cfg.gateway.http_listen == "127.0.0.1:8080"
    assert (cfg.gateway.http_host, cfg.gateway.http_port) == ("127.0.0.1", 8080)
    assert cfg.gateway.max_body_bytes == 4194304
    assert cfg.gateway.auth == "keys"
    assert cfg.gateway.id is None
    assert cfg.network == default.network
    assert cfg.network.listen == ("/ip4/0.0.0.0/tcp/4001",)
    assert cfg.database.url == "sqlite:///tooti.db"
    assert cfg.registry.heartbeat_ttl_sec == 15.0
    assert cfg.routing.max_attempts == 3
    assert cfg.timeouts == default.timeouts


def test_full_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOOTI_TEST_DB_PASSWORD", "pw")
    cfg = load_gateway_config(DATA / "good_gateway_full.yaml")
    assert (cfg.gateway.http_host, cfg.gateway.http_port) == ("::1", 9090)
    assert cfg.gateway.max_body_bytes == 1024
    assert cfg.gateway.auth == "open"
    assert cfg.gateway.id == "gw-eu-1"
    assert cfg.gateway.http_server == "hypercorn"
    assert cfg.network.listen == ("/ip4/0.0.0.0/tcp/5001", "/ip4/0.0.0.0/udp/5001/quic-v1")
    assert cfg.network.bootstrap == (f"/ip4/192.0.2.1/tcp/4001/p2p/{PEER}",)
    assert cfg.database.url == "postgresql://tooti:pw@db:5432/tooti"
    assert cfg.routing.max_attempts == 10
    assert cfg.timeouts.first_token_sec == cfg.timeouts.total_sec == 10.0


def test_gateway_kind_detected_without_gateway_section() -> None:
    path = DATA / "good_gateway_no_section.yaml"
    assert check_file(path) == ("gateway", [])
    cfg = load_gateway_config(path)
    assert cfg.gateway.identity_key_file == DATA / "gateway.key"  # default, beside the file
    assert cfg.database.url == "sqlite:///other.db"


def test_configs_build_without_a_file() -> None:
    assert GatewayConfig().gateway.identity_key_file == Path("gateway.key")
    assert GatewayConfig().path is None
    assert NodeConfig().node.max_concurrency == 4


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_example_configs_pass(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = CONFIGS / name
    net_key = keys.generate(keys.NETWORK_PRIVATE)
    real = {
        "TOOTI_NETWORK_ID": keys.public_of(net_key, keys.NETWORK_PRIVATE, keys.NETWORK_PUBLIC),
        "TOOTI_NAMESPACE_KEY": keys.generate(keys.NAMESPACE_PRIVATE),
    }
    for var in re.findall(r"\$\{(\w+)\}", path.read_text()):
        monkeypatch.setenv(var, real.get(var, "example-value"))
    kind, problems = check_file(path)
    assert problems == []
    assert kind == ("gateway" if name.startswith("gateway") else "node")


def _env_vars(path: Path) -> list[str]:
    """The ${VAR} references in a file's values (comments mention ${VAR} as prose)."""
    values = "\n".join(line.split("#")[0] for line in path.read_text().splitlines())
    return list(dict.fromkeys(re.findall(r"\$\{(\w+)\}", values)))


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_example_configs_pass_config_check_without_environment(name: str) -> None:
    # What a CI job runs: no production secrets in its environment.
    path = CONFIGS / name
    env = {k: v for k, v in os.environ.items() if k not in _env_vars(path)}
    done = _cli("-file", str(path), env_replace=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout
    for var in _env_vars(path):
        assert f"environment variable {var} is not set" in done.stdout


def _where(path: Path, var: str) -> tuple[int, str]:
    """(line, dotted key) of the value that references ${var}: `section:` then `  key:`."""
    section = ""
    for i, text in enumerate(path.read_text().splitlines(), 1):
        if text and not text.startswith((" ", "#")):
            section = text.split(":")[0]
        if "${" + var + "}" in text.split("#")[0]:
            return i, f"{section}.{text.strip().split(':')[0]}"
    raise AssertionError(var)


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_require_env_names_file_line_and_key(name: str) -> None:
    path = CONFIGS / name
    variables = _env_vars(path)
    assert variables, "every shipped config references at least one ${VAR}"
    env = {k: v for k, v in os.environ.items() if k not in variables}
    done = _cli("-file", str(path), "--require-env", env_replace=env)
    assert done.returncode == 1, done.stdout
    out = done.stdout.splitlines()
    for var in variables:
        line, key = _where(path, var)
        assert f"{path}:{line}: {key}: environment variable {var} is not set" in out, out
    # JSON output carries the same, as problems.
    done = _cli("-file", str(path), "--require-env", "--json", env_replace=env)
    report = json.loads(done.stdout)
    assert report["valid"] is False and report["warnings"] == []
    assert {(p["line"], p["key"]) for p in report["problems"]} == {_where(path, v) for v in variables}


def test_unset_env_is_a_warning_by_default_and_an_error_at_load() -> None:
    path = DATA / "bad_env_unset.yaml"
    out = io.StringIO()
    assert run_check(str(path), as_json=True, out=out) == 0
    report = json.loads(out.getvalue())
    assert report["valid"] is True and report["problems"] == []
    assert [(w["line"], w["key"]) for w in report["warnings"]] == [(4, "node.namespace_key")]
    assert run_check(str(path), as_json=False, require_env=True, out=io.StringIO()) == 1
    with pytest.raises(ConfigError, match="TOOTI_TEST_SURELY_UNSET is not set"):
        load_node_config(path)


def test_warning_does_not_hide_a_real_problem(tmp_path: Path) -> None:
    path = write(tmp_path, node_yaml("  namespace_key: ${TOOTI_TEST_SURELY_UNSET}\n  bogus: 1\n"))
    out = io.StringIO()
    assert run_check(str(path), as_json=False, out=out) == 1
    text = out.getvalue()
    assert "unknown key 'bogus'" in text and "warning: " in text


def test_node_start_refuses_without_its_environment(tmp_path: Path) -> None:
    path = CONFIGS / "node.yaml"
    env = {k: v for k, v in os.environ.items() if k not in _env_vars(path)}
    done = subprocess.run(
        [sys.executable, "-m", "tooti", "node", "start", "-file", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 1
    for var in _env_vars(path):
        assert f"environment variable {var} is not set" in done.stderr


def test_gateway_start_refuses_without_its_environment() -> None:
    path = CONFIGS / "gateway.yaml"
    env = {k: v for k, v in os.environ.items() if k not in {*_env_vars(path), "TOOTI_DATABASE_URL"}}
    done = subprocess.run(
        [sys.executable, "-m", "tooti", "gateway", "start", "-file", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 1
    for var in _env_vars(path):
        assert f"environment variable {var} is not set" in done.stderr


def test_example_configs_exist() -> None:
    assert {p.name for p in CONFIGS.glob("*.yaml")} >= {"node.yaml", "gateway.yaml", "node-ollama.yaml"}


# --------------------------------------------------------------------------
# Bad fixtures: exactly one problem each, at the expected key and line.

BAD = [
    # file, kind, key, line, message fragment
    ("bad_unknown_key.yaml", "node", "node.max_concurency", 3, "did you mean 'max_concurrency'"),
    ("bad_bool_int.yaml", "node", "node.max_concurrency", 3, "expected an integer, got a boolean"),
    ("bad_missing_key.yaml", "node", "node.identity_key_file", 1, "missing required key"),
    ("bad_missing_section.yaml", "node", "network", None, "missing required section"),
    ("bad_bootstrap_multiaddr.yaml", "node", "network.bootstrap[1]", 7, "not a valid multiaddr"),
    ("bad_bootstrap_no_peer.yaml", "node", "network.bootstrap[0]", 6, "/p2p/<peer id>"),
    ("bad_peer_id.yaml", "node", "network.bootstrap[0]", 6, "Invalid CID"),
    ("bad_bootstrap_empty.yaml", "node", "network.bootstrap", 5, "at least 1"),
    ("bad_listen_multiaddr.yaml", "node", "network.listen[0]", 6, "not a valid multiaddr"),
    ("bad_url.yaml", "node", "backend.base_url", 8, "http:// or https://"),
    ("bad_missing_base_url.yaml", "node", "backend.base_url", 6, "missing required key"),
    ("bad_enum.yaml", "node", "backend.type", 7, "did you mean 'ollama'"),
    ("bad_namespace.yaml", "node", "node.namespace", 3, "must be 1-63 characters"),
    ("bad_float.yaml", "node", "heartbeat.interval_sec", 9, "greater than 0"),
    ("bad_float_type.yaml", "node", "models.refresh_sec", 9, "expected a number, got a string"),
    ("bad_duplicate.yaml", "node", "node", 8, "duplicate key (first set on line 1)"),
    (
        "bad_env_unset.yaml",
        "node",
        "node.namespace_key",
        4,
        "environment variable TOOTI_TEST_SURELY_UNSET is not set",
    ),
    ("bad_key_dir_missing.yaml", "node", "node.identity_key_file", 2, "neither does its directory"),
    ("bad_range.yaml", "gateway", "routing.max_attempts", 4, "between 1 and 10, got 11"),
    ("bad_gateway_enum.yaml", "gateway", "gateway.auth", 2, "must be one of 'keys', 'open'"),
    ("bad_max_body.yaml", "gateway", "gateway.max_body_bytes", 2, "at least 1024"),
    ("bad_http_listen.yaml", "gateway", "gateway.http_listen", 2, "brackets"),
    ("bad_http_port.yaml", "gateway", "gateway.http_listen", 2, "out of range 1..65535"),
    ("bad_db_url.yaml", "gateway", "database.url", 3, "must start with sqlite:///"),
    ("bad_gateway_bootstrap.yaml", "gateway", "network.bootstrap[0]", 4, "/p2p/<peer id>"),
    ("bad_timeouts_order.yaml", "gateway", "timeouts.first_token_sec", 3, "must not exceed total_sec"),
    ("bad_syntax.yaml", None, "", 6, "invalid YAML"),
    ("bad_not_mapping.yaml", None, "", 1, "top level must be a mapping"),
    ("bad_empty.yaml", None, "", None, "file is empty"),
    ("bad_both_kinds.yaml", None, "", 1, "both node: and gateway:"),
]


@pytest.mark.parametrize(("name", "kind", "key", "line", "fragment"), BAD, ids=[b[0] for b in BAD])
def test_bad_fixture(name: str, kind: str | None, key: str, line: int | None, fragment: str) -> None:
    path = DATA / name
    detected, problems = check_file(path)
    assert detected == kind
    assert len(problems) == 1, problems
    (problem,) = problems
    assert (problem.file, problem.key, problem.line) == (str(path), key, line)
    assert fragment in problem.message


def test_every_bad_fixture_is_covered() -> None:
    on_disk = {p.name for p in DATA.glob("bad_*.yaml")} - {"bad_many.yaml"}
    assert on_disk == {b[0] for b in BAD}


def test_all_problems_reported_at_once() -> None:
    path = DATA / "bad_many.yaml"
    with pytest.raises(ConfigError) as info:
        load_node_config(path)
    found = [(p.line, p.key) for p in info.value.problems]
    assert found == [
        (3, "node.max_concurrency"),
        (4, "node.colour"),
        (8, "network.bootstrap[0]"),
        (11, "backend.base_url"),
        (13, "timeouts.total_sec"),
    ]
    assert str(info.value).splitlines() == [str(p) for p in info.value.problems]


def test_loading_as_the_wrong_kind_fails() -> None:
    with pytest.raises(ConfigError) as info:
        load_gateway_config(DATA / "good_node_minimal.yaml")
    keys = {p.key for p in info.value.problems}
    assert {"node", "backend"} <= keys


def test_problem_str() -> None:
    assert str(Problem("a.yaml", 7, "network.bootstrap[1]", "bad")) == "a.yaml:7: network.bootstrap[1]: bad"
    assert str(Problem("a.yaml", None, "network", "missing")) == "a.yaml: network: missing"
    assert str(Problem("a.yaml", 2, "", "invalid YAML")) == "a.yaml:2: invalid YAML"


# --------------------------------------------------------------------------
# Individual rules


def test_int_accepted_for_float_but_not_float_for_int(tmp_path: Path) -> None:
    path = write(tmp_path, node_yaml("  max_concurrency: 2.5\n", "timeouts:\n  total_sec: 700\n"))
    _, problems = check_file(path)
    assert [(p.key, p.message) for p in problems] == [
        ("node.max_concurrency", "expected an integer, got a number")
    ]


def test_list_expected(tmp_path: Path) -> None:
    path = write(tmp_path, node_yaml(rest="models:\n  allow: llama3\n"))
    (problem,) = check_file(path)[1]
    assert (problem.key, problem.line) == ("models.allow", 9)
    assert "expected a list" in problem.message


def test_null_allow_means_every_model(tmp_path: Path) -> None:
    cfg = load_node_config(write(tmp_path, node_yaml(rest="models:\n  allow:\n")))
    assert cfg.models.allow is None


def test_string_expected_suggests_quotes(tmp_path: Path) -> None:
    (problem,) = check_file(write(tmp_path, node_yaml("  name: 1234\n")))[1]
    assert problem.key == "node.name"
    assert "expected a string, got an integer (put it in quotes)" == problem.message


def test_malformed_env_reference(tmp_path: Path) -> None:
    (problem,) = check_file(write(tmp_path, node_yaml("  namespace_key: ${OOPS\n")))[1]
    assert problem.key == "node.namespace_key"
    assert "malformed" in problem.message


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"node:\n  name: \xff\n")
    (problem,) = check_file(path, "node")[1]
    assert (problem.line, problem.message) == (2, "file is not valid UTF-8 text")


def test_undetectable_kind(tmp_path: Path) -> None:
    path = write(tmp_path, "network:\n  listen: []\n")
    kind, (problem,) = check_file(path)
    assert kind is None and "cannot tell" in problem.message
    assert check_file(path, "gateway") == ("gateway", [])


# --------------------------------------------------------------------------
# Identity key files


def test_existing_valid_key_file(tmp_path: Path) -> None:
    save_identity(create_new_key_pair(), tmp_path / "node.key")
    cfg = load_node_config(write(tmp_path, node_yaml()))
    assert cfg.node.identity_key_file == tmp_path / "node.key"


def test_relative_key_path_resolves_against_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    path = write(tmp_path / "etc", node_yaml(), "node.yaml")
    monkeypatch.chdir(tmp_path)
    assert load_node_config("etc/node.yaml").node.identity_key_file == tmp_path / "etc" / "node.key"
    assert path.exists()


def test_garbage_key_file(tmp_path: Path) -> None:
    (tmp_path / "node.key").write_bytes(b"not a key")
    (problem,) = check_file(write(tmp_path, node_yaml()))[1]
    assert (problem.key, problem.line) == ("node.identity_key_file", 2)
    assert "not a libp2p private key" in problem.message


def test_key_file_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "node.key").mkdir()
    (problem,) = check_file(write(tmp_path, node_yaml()))[1]
    assert "is a directory" in problem.message


def test_gateway_key_file_checked_too(tmp_path: Path) -> None:
    path = write(tmp_path, "gateway:\n  identity_key_file: missing/gw.key\n")
    (problem,) = check_file(path)[1]
    assert (problem.key, problem.line) == ("gateway.identity_key_file", 2)


# --------------------------------------------------------------------------
# Database URL and its environment override


def test_database_url_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The file refers to an unset variable, but the override makes it moot.
    path = write(tmp_path, "gateway:\ndatabase:\n  url: postgresql://u:${TOOTI_TEST_SURELY_UNSET}@h/db\n")
    monkeypatch.setenv("TOOTI_DATABASE_URL", "postgres://other/db")
    assert load_gateway_config(path).database.url == "postgres://other/db"


def test_bad_database_url_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOOTI_DATABASE_URL", f"mysql://root:{SECRET}@h/db")
    (problem,) = check_file(write(tmp_path, "gateway:\n"))[1]
    assert (problem.key, problem.line) == ("database.url", None)
    assert "TOOTI_DATABASE_URL" in problem.message
    assert SECRET not in problem.message


# --------------------------------------------------------------------------
# run_check: exit codes, text and JSON output, secrecy


def test_run_check_exit_codes(tmp_path: Path) -> None:
    out = io.StringIO()
    assert run_check(str(DATA / "good_node_minimal.yaml"), as_json=False, out=out) == 0
    assert "OK (node config)" in out.getvalue()
    out = io.StringIO()
    assert run_check(str(DATA / "bad_many.yaml"), as_json=False, out=out) == 1
    assert "bad_many.yaml: 5 problems" in out.getvalue()
    assert run_check(str(DATA / "bad_syntax.yaml"), as_json=False, out=io.StringIO()) == 1
    out = io.StringIO()
    assert run_check(str(tmp_path / "missing.yaml"), as_json=False, out=out) == 2
    assert "No such file or directory" in out.getvalue()
    out = io.StringIO()
    assert run_check(str(tmp_path), as_json=False, out=out) == 2  # a directory
    assert "cannot read" in out.getvalue()


def test_run_check_kind_override() -> None:
    assert (
        run_check(str(DATA / "good_node_minimal.yaml"), as_json=False, kind="gateway", out=io.StringIO()) == 1
    )


def test_run_check_json_shape() -> None:
    out = io.StringIO()
    path = str(DATA / "bad_range.yaml")
    assert run_check(path, as_json=True, out=out) == 1
    report = json.loads(out.getvalue())
    assert report == {
        "file": path,
        "kind": "gateway",
        "valid": False,
        "problems": [
            {
                "file": path,
                "line": 4,
                "key": "routing.max_attempts",
                "message": "must be between 1 and 10, got 11",
            }
        ],
        "warnings": [],
    }
    out = io.StringIO()
    assert run_check(str(DATA / "good_gateway_minimal.yaml"), as_json=True, out=out) == 0
    assert json.loads(out.getvalue())["valid"] is True


def test_run_check_json_unreadable(tmp_path: Path) -> None:
    out = io.StringIO()
    assert run_check(str(tmp_path / "nope.yaml"), as_json=True, out=out) == 2
    report = json.loads(out.getvalue())
    assert report["valid"] is False and report["problems"] == [] and "error" in report


def test_secret_values_never_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOOTI_TEST_SECRET", SECRET)
    node = write(
        tmp_path,
        node_yaml(
            "  namespace_key: ${TOOTI_TEST_SECRET}\n  bogus: 1\n",
            "backend:\n  type: openai\n  base_url: http://x/\n  api_key: key-${TOOTI_TEST_SECRET}\n",
        ),
        "node.yaml",
    )  # backend duplicated on purpose: one more problem
    gateway = write(tmp_path, "gateway:\ndatabase:\n  url: mysql://u:${TOOTI_TEST_SECRET}@h/db\n", "gw.yaml")
    for path in (node, gateway):
        for as_json in (False, True):
            out = io.StringIO()
            assert run_check(str(path), as_json=as_json, out=out) == 1
            assert SECRET not in out.getvalue()
    with pytest.raises(ConfigError) as info:
        load_gateway_config(gateway)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value.problems)


# --------------------------------------------------------------------------
# The CLI, end to end


def _cli(
    *args: str, env: dict[str, str] | None = None, env_replace: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = os.environ if env_replace is None else env_replace
    return subprocess.run(
        [sys.executable, "-m", "tooti", "config-check", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, "PYTHONPATH": str(ROOT), **(env or {})},
    )


@pytest.mark.skipif(not (ROOT / "tooti" / "cli.py").exists(), reason="tooti/cli.py has not landed yet")
def test_cli_config_check() -> None:
    good = _cli("-file", str(DATA / "good_node_minimal.yaml"))
    assert good.returncode == 0, good.stderr
    bad = _cli("-file", str(DATA / "bad_many.yaml"), "--json")
    assert bad.returncode == 1, bad.stderr
    report = json.loads(bad.stdout)
    assert report["kind"] == "node" and len(report["problems"]) == 5
    assert _cli("-file", str(DATA / "missing.yaml")).returncode == 2
    forced = _cli("-file", str(DATA / "good_node_minimal.yaml"), "--kind", "gateway")
    assert forced.returncode == 1


def test_max_concurrency_is_bounded_by_what_gateways_accept(tmp_path: Path) -> None:
    # A gateway refuses a heartbeat claiming more capacity than this; the config says so first.
    (problem,) = check_file(write(tmp_path, node_yaml("  max_concurrency: 20000\n")))[1]
    assert problem.key == "node.max_concurrency"
    assert problem.message == "must be between 1 and 16384, got 20000"
