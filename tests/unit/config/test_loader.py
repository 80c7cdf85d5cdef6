"""Policy loading: shipped policies, every validation rule (with file:line: field), env handling, the limits and store sections, secrets never echoed, nesting."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from proxy.config import (
    Deployment,
    FieldError,
    Policy,
    PolicyError,
    Timeouts,
    hash_key,
    load_policy,
    parse_policy,
)
from proxy.config.schema import LeaseSettings, Limits, StoreSettings
from proxy.limits import Limiter
from proxy.simulate.tls import make_ca

POLICIES = Path(__file__).resolve().parents[3] / "policies"

# A valid policy; tests append to it or swap lines to break one thing at a time.
BASE = """\
version: 1
auth: open
deployments:
  - name: spark
    provider: cerebras
    model: gpt-oss-120b
    base_url: https://api.cerebras.ai/v1
  - name: gpt
    provider: openai
    model: gpt-5.3-codex
    base_url: https://api.openai.com/v1
routes:
  - name: codex
    candidates: [spark, gpt]
"""


def parse(text: str, env: dict[str, str] | None = None) -> Policy:
    return parse_policy(textwrap.dedent(text), env=env or {})


def errors(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse(text, env)
    assert str(info.value) == "\n".join(str(e) for e in info.value.errors)
    return [str(e) for e in info.value.errors]


def has_error(text: str, prefix: str, contains: str = "") -> str:
    """Assert an error starting with exactly ``prefix`` ("<string>:LINE: FIELD:") exists; return it."""
    found = [e for e in errors(text) if e.startswith(prefix + " ")]
    assert found, f"no error starting with {prefix!r} in {errors(text)}"
    assert contains in found[0], found[0]
    return found[0]


# --- shipped policies ------------------------------------------------------------------


def test_demo_policy_loads_without_warnings() -> None:
    policy = load_policy(POLICIES / "demo.yaml", env={})
    assert policy.warnings == ()
    assert policy.auth == "open"
    assert list(policy.deployments) == ["spark-wafer", "oss-wafer", "codex-gpu", "claude-gpu"]
    assert list(policy.routes) == ["codex", "fast", "deep", "claude"]
    assert policy.routes["codex"].candidates == ("spark-wafer", "codex-gpu")
    assert policy.deployments["claude-gpu"].openai_compatible is False
    assert policy.deployments["spark-wafer"].openai_compatible is True
    wafer, gpu = policy.simulators
    assert (wafer.name, wafer.profile, wafer.port, wafer.rpm, wafer.tpm, wafer.dialect) == (
        "sim-wafer", "wafer", 4101, 30, 60000, "cerebras")
    assert (gpu.name, gpu.profile, gpu.port, gpu.dialect) == ("sim-gpu", "gpu", 4102, "openai")


def test_production_example_loads_with_only_missing_key_warnings() -> None:
    policy = load_policy(POLICIES / "example-production.yaml", env={})
    assert policy.auth == "keys"
    assert policy.keys[0].sha256 == hash_key("lw-example-key-change-me")
    assert set(policy.routes) == {"codex", "fast", "deep"}
    assert {d.api_key for d in policy.deployments.values()} == {None}
    assert policy.warnings and all("is not set" in str(w) for w in policy.warnings)
    assert policy.deployments["spark-wafer"].timeouts == Timeouts(2, 20, 30, 300)


def test_production_example_resolves_keys_from_env() -> None:
    env = {"CEREBRAS_API_KEY": "csk-1", "OPENAI_API_KEY": "sk-2", "ANTHROPIC_API_KEY": "sk-ant-3"}
    policy = load_policy(POLICIES / "example-production.yaml", env=env)
    assert policy.warnings == ()
    assert policy.deployments["oss-wafer"].api_key == "csk-1"
    assert policy.deployments["claude-gpu"].api_key == "sk-ant-3"
    assert "sk-2" not in repr(policy.deployments["codex-gpu"])


# --- the happy path in detail ------------------------------------------------------------


def test_defaults_and_normalisation() -> None:
    policy = parse(BASE.replace("https://api.openai.com/v1", "https://api.openai.com/v1/"))
    gpt = policy.deployments["gpt"]
    assert gpt == Deployment("gpt", "openai", "gpt-5.3-codex", "https://api.openai.com/v1")
    assert gpt.timeouts == Timeouts() and gpt.hardware == "gpu" and dict(gpt.headers) == {}
    assert policy.routes["codex"].strategy == "fallback"
    assert policy.server.max_body_bytes == 10 * 1024 * 1024
    assert policy.source == "<string>" and policy.simulators == () and policy.keys == ()


def test_loaded_policy_is_read_only() -> None:
    policy = parse(BASE)
    with pytest.raises(TypeError):
        policy.deployments["x"] = policy.deployments["gpt"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        policy.auth = "keys"  # type: ignore[misc]


def test_env_interpolation_with_defaults() -> None:
    text = BASE + "server: {max_body_bytes: 1024}\n"
    text = text.replace("model: gpt-5.3-codex", "model: ${MODEL:-gpt-default}")
    text = text.replace("base_url: https://api.cerebras.ai/v1", 'base_url: "${SPARK_URL}"\n    headers: {X-Org: "org-${ORG:-none}", X-Team: "${TEAM}"}')
    policy = parse(text, env={"SPARK_URL": "http://10.0.0.1:8000/v1/", "TEAM": "core", "ORG": ""})
    assert policy.deployments["gpt"].model == "gpt-default"
    assert policy.deployments["spark"].base_url == "http://10.0.0.1:8000/v1"
    assert dict(policy.deployments["spark"].headers) == {"X-Org": "org-none", "X-Team": "core"}
    assert policy.server.max_body_bytes == 1024
    assert parse(text, env={"SPARK_URL": "http://h", "TEAM": "t", "MODEL": "m2"}).deployments["gpt"].model == "m2"


def test_unset_variable_without_default_is_an_error() -> None:
    text = BASE.replace("model: gpt-5.3-codex", "model: ${MODEL}")
    has_error(text, "<string>:10: deployments[1].model:", "environment variable MODEL is not set")


def test_api_key_from_env_and_both_spellings() -> None:
    text = BASE.replace("    base_url: https://api.openai.com/v1", "    base_url: https://api.openai.com/v1\n    api_key: ${OPENAI_API_KEY}")
    text = text.replace("    base_url: https://api.cerebras.ai/v1", "    base_url: https://api.cerebras.ai/v1\n    api_key_env: CEREBRAS_API_KEY")
    policy = parse(text, env={"OPENAI_API_KEY": "sk-x", "CEREBRAS_API_KEY": "csk-y"})
    assert policy.deployments["gpt"].api_key == "sk-x"
    assert policy.deployments["gpt"].api_key_env == "OPENAI_API_KEY"
    assert policy.deployments["spark"].api_key == "csk-y"
    assert "sk-x" not in repr(policy) and "csk-y" not in repr(policy)


def test_missing_api_key_env_var_is_a_warning() -> None:
    text = BASE.replace("    base_url: https://api.openai.com/v1", "    base_url: https://api.openai.com/v1\n    api_key: ${OPENAI_API_KEY}")
    policy = parse(text, env={})
    assert policy.deployments["gpt"].api_key is None
    assert [str(w) for w in policy.warnings] == [
        "<string>:12: deployments[1].api_key: environment variable OPENAI_API_KEY is not set; "
        "requests to 'gpt' will be sent without a key (set it and reload)"
    ]
    assert isinstance(policy.warnings[0], FieldError)


def test_open_auth_with_keys_warns() -> None:
    policy = parse(BASE + f"keys:\n  - {{name: a, sha256: {hash_key('k')}}}\n")
    assert [w.field for w in policy.warnings] == ["keys"]


def test_hash_key() -> None:
    assert hash_key("foo") == "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"


def test_version_hash_changes_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(BASE)
    first = load_policy(path, env={})
    assert len(first.version) == 12 and int(first.version, 16) >= 0
    assert load_policy(path, env={}).version == first.version
    assert parse_policy(BASE, env={}).version == first.version
    path.write_text(BASE + "# a comment\n")
    assert load_policy(path, env={}).version != first.version
    assert load_policy(path, env={}).source == str(path)


# --- secrets -----------------------------------------------------------------------------


def test_literal_api_key_is_rejected_without_echoing_it() -> None:
    secret = "sk-live-abcdef0123456789"
    text = BASE.replace("    base_url: https://api.openai.com/v1", f"    base_url: https://api.openai.com/v1\n    api_key: {secret}")
    message = has_error(text, "<string>:12: deployments[1].api_key:", "environment variable")
    assert "move" in message
    assert all(secret not in e for e in errors(text))


@pytest.mark.parametrize("value", ["${KEY:-sk-live-default99}", "Bearer ${KEY}", "sk-live-abc${KEY}"])
def test_api_key_must_be_exactly_one_reference(value: str) -> None:
    text = BASE.replace("    base_url: https://api.openai.com/v1", f'    base_url: https://api.openai.com/v1\n    api_key: "{value}"')
    assert any(e.startswith("<string>:12: deployments[1].api_key:") for e in errors(text))
    assert all("sk-live" not in e for e in errors(text))


def test_raw_key_in_sha256_field_is_not_echoed() -> None:
    text = BASE.replace("auth: open", "auth: keys") + "keys:\n  - name: alice\n    sha256: sk-live-oops\n"
    message = has_error(text, "<string>:17: keys[0].sha256:", "64 hex characters")
    assert "sk-live-oops" not in message


def test_syntax_error_does_not_quote_the_line() -> None:
    text = BASE + "  api_key: 'sk-live-unterminated\n"
    (message,) = errors(text)
    assert message.startswith("<string>:15: YAML syntax error")
    assert "sk-live" not in message


# --- validation rules, one by one ----------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "prefix", "contains"),
    [
        ("version: 1", "version: 2", "<string>:1: version:", "unsupported policy format version 2"),
        ("version: 1\n", "", "<string>:1: version:", "missing required key 'version'"),
        ("auth: open", "auth: maybe", "<string>:2: auth:", "valid: keys, open"),
        ("auth: open", "auth: keys", "<string>:2: auth:", "no keys are listed"),
        ("  - name: gpt\n", "  - nmae: gpt\n", "<string>:8: deployments[1].nmae:", "did you mean 'name'?"),
        ("  - name: gpt\n", "  - nmae: gpt\n", "<string>:8: deployments[1].name:", "missing required key 'name'"),
        ("    model: gpt-5.3-codex\n", "", "<string>:8: deployments[1].model:", "missing required key 'model'"),
        ("    provider: openai", "    provider: opnai", "<string>:9: deployments[1].provider:", "did you mean 'openai'?"),
        ("    provider: openai", "    provider: bedrock", "<string>:9: deployments[1].provider:", "valid: anthropic, cerebras"),
        ("https://api.openai.com/v1", "api.openai.com/v1", "<string>:11: deployments[1].base_url:", "http:// or https://"),
        ("https://api.openai.com/v1", "ftp://api.openai.com", "<string>:11: deployments[1].base_url:", "http:// or https://"),
        ("https://api.openai.com/v1", "https://host:99999/v1", "<string>:11: deployments[1].base_url:", "http:// or https://"),
        ("    model: gpt-5.3-codex", "    model: [a, b]", "<string>:10: deployments[1].model:", "expected a string, got a list"),
        ("  - name: gpt", "  - name: spark", "<string>:8: deployments[1].name:", "duplicate deployment name 'spark'; first defined on line 4"),
        ("candidates: [spark, gpt]", "candidates: [spark, gtp]", "<string>:14: routes[0].candidates[1]:", "unknown deployment 'gtp'; did you mean 'gpt'?"),
        ("candidates: [spark, gpt]", "candidates: [spark, spark]", "<string>:14: routes[0].candidates[1]:", "listed twice"),
        ("candidates: [spark, gpt]", "candidates: []", "<string>:14: routes[0].candidates:", "at least one deployment"),
        ("    candidates: [spark, gpt]\n", "", "<string>:13: routes[0].candidates:", "missing required key 'candidates'"),
        ("  - name: codex", "  - name: spark", "<string>:13: routes[0].name:", "same name as a deployment"),
        ("  - name: codex", "  - name: codex\n    strategy: hedge", "<string>:14: routes[0].strategy:", "valid: cost, fallback, latency, weighted"),
        ("    model: gpt-5.3-codex\n", "    model: gpt-5.3-codex\n    websocket_compression: gzip\n",
         "<string>:11: deployments[1].websocket_compression:", "unknown websocket compression 'gzip'; valid: deflate, none"),
        ("deployments:\n", "deployments:\n  - 42\n", "<string>:4: deployments[0]:", "expected a mapping"),
        ("routes:\n", "routes: 3\nx:\n", "<string>:12: routes:", "expected a list, got an integer"),
        ("version: 1\n", "version: 1\nversion: 1\n", "<string>:2: version:", "duplicate key"),
    ],
)
def test_rule(old: str, new: str, prefix: str, contains: str) -> None:
    assert old in BASE
    has_error(BASE.replace(old, new, 1), prefix, contains)


def test_duplicate_route_names() -> None:
    has_error(BASE + "  - {name: codex, candidates: [gpt]}\n", "<string>:15: routes[1].name:", "duplicate route name 'codex'; first defined on line 13")


def test_no_deployments() -> None:
    has_error("version: 1\nauth: open\ndeployments: []\n", "<string>:3: deployments:", "at least one deployment")
    has_error("version: 1\nauth: open\n", "<string>:1: deployments:", "missing required key 'deployments'")


@pytest.mark.parametrize(
    ("timeouts", "field", "contains"),
    [
        ("{connect_s: 0}", "connect_s", "greater than 0"),
        ("{idle_s: -1.5}", "idle_s", "greater than 0"),
        ("{total_s: .inf}", "total_s", "finite"),
        ("{first_byte_s: soon}", "first_byte_s", "expected a number, got a string"),
        ("{first_byte_s: true}", "first_byte_s", "expected a number, got a boolean"),
        ("{connect: 1}", "connect", "did you mean 'connect_s'?"),
    ],
)
def test_timeouts(timeouts: str, field: str, contains: str) -> None:
    text = BASE.replace("    model: gpt-oss-120b", f"    model: gpt-oss-120b\n    timeouts: {timeouts}")
    has_error(text, f"<string>:7: deployments[0].timeouts.{field}:", contains)


def test_timeouts_accept_ints_and_floats() -> None:
    text = BASE.replace("    model: gpt-oss-120b", "    model: gpt-oss-120b\n    timeouts: {connect_s: 1, idle_s: 2.5}")
    assert parse(text).deployments["spark"].timeouts == Timeouts(connect_s=1.0, idle_s=2.5)


@pytest.mark.parametrize(
    ("sha", "contains"),
    [("abc", "64 hex characters"), ("g" * 64, "64 hex characters"), ("", "expected a string")],
)
def test_key_hash_format(sha: str, contains: str) -> None:
    text = BASE.replace("auth: open", "auth: keys") + f"keys:\n  - name: alice\n    sha256: {sha}\n"
    has_error(text, "<string>:17: keys[0].sha256:", contains)


def test_duplicate_keys() -> None:
    h = hash_key("k")
    text = BASE.replace("auth: open", "auth: keys") + f"keys:\n  - {{name: a, sha256: {h}}}\n  - {{name: a, sha256: {h.upper()}}}\n"
    errs = errors(text)
    assert any(e.startswith("<string>:17: keys[1].name: duplicate key name 'a'") for e in errs)
    assert any(e.startswith("<string>:17: keys[1].sha256: duplicate key hash") for e in errs)


def test_keys_load() -> None:
    text = BASE.replace("auth: open", "auth: keys") + f"keys:\n  - {{name: alice, sha256: {hash_key('k').upper()}, team: core}}\n"
    (key,) = parse(text).keys
    assert (key.name, key.sha256, key.team) == ("alice", hash_key("k"), "core")


@pytest.mark.parametrize(
    ("sim", "field", "contains"),
    [
        ("{name: s, profile: tpu, port: 4101}", "profile", "valid: gpu, instant, wafer"),
        ("{name: s, profile: gpu, port: 0}", "port", "greater than 0"),
        ("{name: s, profile: gpu, port: 70000}", "port", "between 1 and 65535"),
        ("{name: s, profile: gpu, port: 4101, dialect: anthropic}", "dialect", "valid: cerebras, openai"),
        ("{name: s, profile: gpu, port: 4101, rpm: -3}", "rpm", "greater than 0"),
        ("{name: s, profile: gpu}", "port", "missing required key 'port'"),
    ],
)
def test_simulators(sim: str, field: str, contains: str) -> None:
    has_error(BASE + f"simulators:\n  - {sim}\n", f"<string>:16: simulators[0].{field}:", contains)


def test_duplicate_simulator_ports() -> None:
    text = BASE + "simulators:\n  - {name: a, profile: gpu, port: 4101}\n  - {name: b, profile: wafer, port: 4101}\n"
    has_error(text, "<string>:17: simulators[1].port:", "duplicate simulator port 4101")


@pytest.mark.parametrize("value", ["0", "-1", "big"])
def test_max_body_bytes(value: str) -> None:
    has_error(BASE + f"server:\n  max_body_bytes: {value}\n", "<string>:16: server.max_body_bytes:")


@pytest.mark.parametrize("value", ["-1", "soon", ".nan"])
def test_stream_batch_ms(value: str) -> None:
    has_error(BASE + f"server:\n  stream_batch_ms: {value}\n", "<string>:16: server.stream_batch_ms:")
    assert parse(BASE + "server: {stream_batch_ms: 20}\n").server.stream_batch_ms == 20
    assert parse(BASE).server.stream_batch_ms == 0


def test_headers_validated() -> None:
    text = BASE.replace("    model: gpt-oss-120b", '    model: gpt-oss-120b\n    headers: {"Bad Header": x, X-Ok: [1]}')
    errs = errors(text)
    assert any(e.startswith("<string>:7: deployments[0].headers.Bad Header: is not a valid HTTP header name") for e in errs)
    assert any(e.startswith("<string>:7: deployments[0].headers.X-Ok: expected a string") for e in errs)


def test_all_errors_are_reported_in_line_order() -> None:
    text = """\
    version: 1
    auth: keys
    deployments:
      - name: a
        provider: nope
        model: m
        base_url: localhost
        api_key: sk-live-zzz
      - name: a
        provider: openai
        base_url: http://x
    routes:
      - name: r
        candidates: [a, missing]
    simulators:
      - {name: s, profile: gpu, port: 99999}
    """
    errs = errors(text)
    assert [e.split(" ", 2)[:2] for e in errs] == [
        ["<string>:2:", "auth:"],
        ["<string>:5:", "deployments[0].provider:"],
        ["<string>:7:", "deployments[0].base_url:"],
        ["<string>:8:", "deployments[0].api_key:"],
        ["<string>:9:", "deployments[1].model:"],
        ["<string>:9:", "deployments[1].name:"],
        ["<string>:14:", "routes[0].candidates[1]:"],
        ["<string>:16:", "simulators[0].port:"],
    ]
    assert not any("sk-live-zzz" in e for e in errs)


def test_route_to_broken_deployment_is_not_reported_as_unknown() -> None:
    text = BASE.replace("    provider: openai", "    provider: nope")
    assert [e.split(":")[2].strip() for e in errors(text)] == ["deployments[1].provider"]


# --- file-level problems -----------------------------------------------------------------


def test_yaml_syntax_error_has_line() -> None:
    (message,) = errors(BASE + "routes2: [a, b\n")
    assert message.startswith("<string>:16: YAML syntax error")


def test_unquoted_reference_in_flow_mapping_gets_a_hint() -> None:
    text = BASE.replace("    model: gpt-oss-120b", "    model: gpt-oss-120b\n    headers: {X-Org: ${ORG}}")
    (message,) = errors(text)
    assert message.startswith("<string>:7: YAML syntax error") and 'quote values that use ${VAR}' in message


def test_empty_and_non_mapping_documents() -> None:
    assert errors("") == ["<string>:1: the policy is empty; start from policies/example-production.yaml"]
    assert errors("- a\n- b\n")[0].startswith("<string>:1: expected a mapping")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path / "missing.yaml")
    (error,) = info.value.errors
    assert (error.line, error.field) == (0, "")
    assert str(error).startswith(f"{tmp_path / 'missing.yaml'}: cannot read policy file")


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"version: 1\nauth: \xff\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert str(info.value).startswith(f"{path}:2: the file is not UTF-8")


SHA = "a" * 64

LIMITS_BASE = """\
version: 1
auth: keys
{store}
keys:
  - name: alice
    sha256: {sha}
    {key_limits}
deployments:
  - name: spark
    provider: cerebras
    model: m
    base_url: http://127.0.0.1:9/v1
    {dep_limits}
"""


def limits_policy(store: str = "", key_limits: str = "", dep_limits: str = "", env: dict | None = None):
    return parse_policy(LIMITS_BASE.format(store=store, sha=SHA, key_limits=key_limits, dep_limits=dep_limits), "p.yaml", env or {})


def limits_errors(**parts) -> list[str]:
    with pytest.raises(PolicyError) as info:
        limits_policy(**parts)
    return [str(e) for e in info.value.errors]


def test_limits_and_store_default_to_unlimited_in_memory():
    loaded = limits_policy()
    assert loaded.store == StoreSettings() and loaded.store.redis_url is None
    assert loaded.deployments["spark"].limits is None and loaded.keys[0].limits is None
    assert not Limiter.from_policy(loaded).active  # nothing to enforce: requests skip the limiter


def test_any_subset_of_limits_may_be_set():
    loaded = limits_policy(key_limits="limits: {rpm: 60, concurrency: 4}", dep_limits="limits: {tpm: 60000, rpd: 14400, tpd: 1000000}")
    assert loaded.keys[0].limits == Limits(rpm=60, concurrency=4)
    assert loaded.deployments["spark"].limits == Limits(tpm=60000, rpd=14400, tpd=1000000)
    assert Limiter.from_policy(loaded).active


def test_store_section_reads_redis_url_from_the_environment():
    loaded = limits_policy(store="store: {redis_url: '${REDIS_URL}', on_store_error: fail_closed, replicas: 3, timeout_ms: 20, "
                    "topology: cluster, lease_s: 10}", env={"REDIS_URL": "redis://:secret@10.0.0.5:6379/0"})
    assert loaded.store == StoreSettings("redis://:secret@10.0.0.5:6379/0", "cluster", "fail_closed", 3, 20, 10.0)
    assert "secret" not in repr(loaded.store)


def test_store_leases_are_off_unless_set_and_take_their_defaults():
    assert limits_policy(store="store: {redis_url: 'redis://h:6379/0'}").store.leases is None
    leases = limits_policy(store="store: {redis_url: 'redis://h:6379/0', leases: {share: 0.25}}").store.leases
    assert leases == LeaseSettings(requests=256, duration_ms=1000, share=0.25)


@pytest.mark.parametrize(
    "parts, expected",
    [
        ({"dep_limits": "limits: {rpm: 0}"}, "p.yaml:13: deployments[0].limits.rpm: must be greater than 0"),
        ({"key_limits": "limits: {tpm: lots}"}, "p.yaml:7: keys[0].limits.tpm: expected an integer"),
        ({"key_limits": "limits: {rps: 5}"}, "p.yaml:7: keys[0].limits.rps: unknown key 'rps'"),
        ({"store": "store: {on_store_error: fail_sometimes}"}, "p.yaml:3: store.on_store_error: unknown on_store_error mode"),
        ({"store": "store: {redis_url: 'http://:pw@host/'}"}, "p.yaml:3: store.redis_url: must be a Redis URL"),
        ({"store": "store: {timeout_ms: -5}"}, "p.yaml:3: store.timeout_ms: must be greater than 0"),
        ({"store": "store: {topology: sharded}"}, "p.yaml:3: store.topology: unknown store topology"),
        ({"store": "store: {leases: {duration_ms: 5000}}"}, "p.yaml:3: store.leases.duration_ms: must be at most 1000 ms"),
        ({"store": "store: {leases: {requests: 0}}"}, "p.yaml:3: store.leases.requests: must be greater than 0"),
        ({"store": "store: {leases: {requests: 5000}}"}, "p.yaml:3: store.leases.requests: must be at most 1000"),
        ({"store": "store: {leases: {share: 1.5}}"}, "p.yaml:3: store.leases.share: must be at most 1 (the share"),
        ({"store": "store: {leases: {size: 5}}"}, "p.yaml:3: store.leases.size: unknown key 'size'"),
    ],
)
def test_validation_errors_name_file_line_and_field(parts, expected):
    found = limits_errors(**parts)
    assert any(e.startswith(expected) for e in found), found
    assert not any(":pw@" in e for e in found)  # a URL that may carry a password is never echoed


SECRETS_BASE = """\
version: 1
auth: open
deployments:
  - name: spark
    provider: cerebras
    model: gpt-oss-120b
    base_url: https://api.cerebras.ai/v1
"""
SECRET_VALUE = "sk-live-5f1c2a9be0d4417f"


def secret_errors(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, env=env or {})
    return [str(e) for e in info.value.errors]


@pytest.mark.parametrize("nested, line", [
    ("x: " + "[" * 3000 + "]" * 3000, 8),
    ("x: " + "{a: " * 3000 + "1" + "}" * 3000, 8),
    ("x:\n" + "".join("  " * i + "-\n" for i in range(1, 400)), 9 + 63),  # the line of the 65th level
])
def test_deep_nesting_is_one_error_with_its_line(nested, line):
    assert secret_errors(SECRETS_BASE + nested + "\n") == [f"<string>:{line}: nesting too deep (more than 64 levels of lists or mappings)"]


def test_ordinary_nesting_still_loads():
    assert parse_policy(SECRETS_BASE + "routes:\n  - name: r\n    candidates: [spark]\n", env={}).routes["r"].candidates == ("spark",)


def test_unknown_provider_from_the_environment_is_named_not_echoed():
    text = SECRETS_BASE.replace("provider: cerebras", "provider: ${SECRET_VALUE}")
    found = secret_errors(text, {"SECRET_VALUE": SECRET_VALUE})
    assert found == ["<string>:5: deployments[0].provider: unknown provider '${SECRET_VALUE}'; valid: "
                     "anthropic, cerebras, groq, openai, openai_compatible, together, vllm"]


def test_environment_values_are_redacted_in_warnings_too():
    text = SECRETS_BASE + "keys:\n  - name: ${SECRET_VALUE}\n    sha256: " + "a" * 64 + "\n"
    policy = parse_policy(text, env={"SECRET_VALUE": SECRET_VALUE})
    assert policy.warnings and not any(SECRET_VALUE in str(w) for w in policy.warnings)


def test_environment_values_are_redacted_wherever_they_appear_in_a_message():
    text = SECRETS_BASE.replace("model: gpt-oss-120b", "model: m\n    hardware: x\n    websocket: ${SECRET_VALUE}")
    found = secret_errors(text, {"SECRET_VALUE": SECRET_VALUE})
    assert found and not any(SECRET_VALUE in line for line in found)


@pytest.mark.parametrize("name, value", [
    ("Authorization", "Bearer sk-abcdef0123456789"),
    ("Authorization", "Bearer abcdefghijklmnopqrstuvwxyz"),
    ("Authorization", "${NOT_SET:-Bearer s3cr3t-default}"),
    ("x-api-key", "abc123"),
    ("X-Goog-Api-Key", "abc123"),
    ("x-auth-token", "t0k3n"),
    ("OpenAI-Organization", "sk-proj-abcdefghijkl"),
])
def test_a_literal_credential_in_any_header_is_refused_without_echo(name, value):
    text = SECRETS_BASE + f'    headers:\n      {name}: "{value}"\n'
    found = secret_errors(text)
    assert found == [f"<string>:9: deployments[0].headers.{name}: holds a literal credential; put it in an "
                     "environment variable and refer to it with ${VAR} (and rotate it if this file was ever "
                     'shared), e.g. "Bearer ${VAR}"']
    secret = value.split()[-1].strip("}")
    assert not any(secret in line for line in found)


@pytest.mark.parametrize("name, value", [
    ("Authorization", "Bearer ${KEY}"),
    ("Authorization", "${KEY}"),
    ("x-api-key", "${KEY}"),
    ("OpenAI-Organization", "org-123"),
    ("anthropic-version", "2023-06-01"),
])
def test_headers_from_the_environment_or_without_credentials_load(name, value):
    policy = parse_policy(SECRETS_BASE + f'    headers:\n      {name}: "{value}"\n', env={"KEY": SECRET_VALUE})
    assert policy.deployments["spark"].headers[name] == value.replace("${KEY}", SECRET_VALUE)


@pytest.mark.parametrize("url", ["redis://:hunter2@redis:6379/0", "rediss://default:hunter2@redis:6380",
                                 "${REDIS_URL:-redis://:hunter2@redis:6379/0}"])
def test_a_literal_redis_password_is_refused_without_echo(url):
    found = secret_errors(SECRETS_BASE + f'store:\n  redis_url: "{url}"\n')
    assert len(found) == 1 and found[0].startswith("<string>:9: store.redis_url: holds a literal password;")
    assert "hunter2" not in found[0]


@pytest.mark.parametrize("url, loaded", [
    ("redis://:${REDIS_PASSWORD}@redis:6379/0", "redis://:hunter2@redis:6379/0"),
    ("${REDIS_URL}", "redis://:hunter2@redis:6379/0"),
    ("redis://redis:6379/0", "redis://redis:6379/0"),
])
def test_redis_passwords_from_the_environment_load(url, loaded):
    env = {"REDIS_PASSWORD": "hunter2", "REDIS_URL": "redis://:hunter2@redis:6379/0"}
    assert parse_policy(SECRETS_BASE + f'store:\n  redis_url: "{url}"\n', env=env).store.redis_url == loaded


def test_literal_userinfo_in_a_base_url_is_refused_without_echo():
    found = secret_errors(SECRETS_BASE.replace("https://api.cerebras.ai/v1", "https://me:hunter2@api.cerebras.ai/v1"))
    assert len(found) == 1 and found[0].startswith("<string>:7: deployments[0].base_url: holds literal credentials")
    assert "hunter2" not in found[0]


@pytest.mark.parametrize("written, env, replicas", [("3", {}, 3), ("${N}", {"N": "12"}, 12), ("${N:-2}", {}, 2)])
def test_store_replicas_may_come_from_the_environment(written, env, replicas):
    assert parse_policy(SECRETS_BASE + f"store:\n  replicas: {written}\n", env=env).store.replicas == replicas


@pytest.mark.parametrize("value, shown", [("0", "'0'"), ("-1", "'-1'"), ("three", "'${N}'")])
def test_a_replica_count_from_the_environment_must_be_a_positive_number(value, shown):
    """Values under 4 characters are no secrets and are shown; longer ones only by name."""
    found = secret_errors(SECRETS_BASE + "store:\n  replicas: ${N}\n", {"N": value})
    assert found == [f"<string>:9: store.replicas: must be a whole number greater than 0, got {shown}"]


def test_ca_file_relative_to_the_policy_file_and_checked_at_load(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    ca = make_ca(tmp_path / "certs").ca
    policy = tmp_path / "policy.yaml"
    policy.write_text(BASE.replace("    model: gpt-oss-120b", "    model: gpt-oss-120b\n    ca_file: certs/ca.pem"))
    assert load_policy(policy).deployments["spark"].ca_file == str(ca)
    assert load_policy(policy).deployments["gpt"].ca_file is None


@pytest.mark.parametrize("content, reason", [(None, "No such file or directory"), ("", "no PEM certificate in it"),
                                             ("not a certificate\n", "no PEM certificate in it")])
def test_a_missing_or_empty_ca_file_is_a_field_error(tmp_path: Path, content: str | None, reason: str) -> None:
    target = tmp_path / "ca.pem"
    if content is not None:
        target.write_text(content)
    text = BASE.replace("    model: gpt-oss-120b", f"    model: gpt-oss-120b\n    ca_file: {target}")
    has_error(text, "<string>:7: deployments[0].ca_file:", f"cannot use {target} as a CA bundle: {reason}")


def test_a_ca_file_on_a_litellm_provider_is_refused(tmp_path: Path) -> None:
    ca = make_ca(tmp_path).ca
    text = BASE.replace("    provider: cerebras", "    provider: anthropic").replace(
        "    model: gpt-oss-120b", f"    model: gpt-oss-120b\n    ca_file: {ca}")
    has_error(text, "<string>:7: deployments[0].ca_file:", "is for OpenAI-compatible providers; anthropic goes")
