"""Policy loading at the edges: nesting that would overflow the stack, secrets that must never be echoed."""
from __future__ import annotations

import pytest

from proxy.config import PolicyError, parse_policy

BASE = """\
version: 1
auth: open
deployments:
  - name: spark
    provider: cerebras
    model: gpt-oss-120b
    base_url: https://api.cerebras.ai/v1
"""
SECRET = "sk-live-5f1c2a9be0d4417f"


def errors(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, env=env or {})
    return [str(e) for e in info.value.errors]


@pytest.mark.parametrize("nested, line", [
    ("x: " + "[" * 3000 + "]" * 3000, 8),
    ("x: " + "{a: " * 3000 + "1" + "}" * 3000, 8),
    ("x:\n" + "".join("  " * i + "-\n" for i in range(1, 400)), 9 + 63),  # the line of the 65th level
])
def test_deep_nesting_is_one_error_with_its_line(nested, line):
    assert errors(BASE + nested + "\n") == [f"<string>:{line}: nesting too deep (more than 64 levels of lists or mappings)"]


def test_ordinary_nesting_still_loads():
    assert parse_policy(BASE + "routes:\n  - name: r\n    candidates: [spark]\n", env={}).routes["r"].candidates == ("spark",)


def test_unknown_provider_from_the_environment_is_named_not_echoed():
    text = BASE.replace("provider: cerebras", "provider: ${SECRET}")
    found = errors(text, {"SECRET": SECRET})
    assert found == ["<string>:5: deployments[0].provider: unknown provider '${SECRET}'; valid: "
                     "anthropic, cerebras, groq, openai, openai_compatible, together, vllm"]


def test_environment_values_are_redacted_in_warnings_too():
    text = BASE + "keys:\n  - name: ${SECRET}\n    sha256: " + "a" * 64 + "\n"
    policy = parse_policy(text, env={"SECRET": SECRET})
    assert policy.warnings and not any(SECRET in str(w) for w in policy.warnings)


def test_environment_values_are_redacted_wherever_they_appear_in_a_message():
    text = BASE.replace("model: gpt-oss-120b", "model: m\n    hardware: x\n    websocket: ${SECRET}")
    found = errors(text, {"SECRET": SECRET})
    assert found and not any(SECRET in line for line in found)


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
    text = BASE + f'    headers:\n      {name}: "{value}"\n'
    found = errors(text)
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
    policy = parse_policy(BASE + f'    headers:\n      {name}: "{value}"\n', env={"KEY": SECRET})
    assert policy.deployments["spark"].headers[name] == value.replace("${KEY}", SECRET)


@pytest.mark.parametrize("url", ["redis://:hunter2@redis:6379/0", "rediss://default:hunter2@redis:6380",
                                 "${REDIS_URL:-redis://:hunter2@redis:6379/0}"])
def test_a_literal_redis_password_is_refused_without_echo(url):
    found = errors(BASE + f'store:\n  redis_url: "{url}"\n')
    assert len(found) == 1 and found[0].startswith("<string>:9: store.redis_url: holds a literal password;")
    assert "hunter2" not in found[0]


@pytest.mark.parametrize("url, loaded", [
    ("redis://:${REDIS_PASSWORD}@redis:6379/0", "redis://:hunter2@redis:6379/0"),
    ("${REDIS_URL}", "redis://:hunter2@redis:6379/0"),
    ("redis://redis:6379/0", "redis://redis:6379/0"),
])
def test_redis_passwords_from_the_environment_load(url, loaded):
    env = {"REDIS_PASSWORD": "hunter2", "REDIS_URL": "redis://:hunter2@redis:6379/0"}
    assert parse_policy(BASE + f'store:\n  redis_url: "{url}"\n', env=env).store.redis_url == loaded


def test_literal_userinfo_in_a_base_url_is_refused_without_echo():
    found = errors(BASE.replace("https://api.cerebras.ai/v1", "https://me:hunter2@api.cerebras.ai/v1"))
    assert len(found) == 1 and found[0].startswith("<string>:7: deployments[0].base_url: holds literal credentials")
    assert "hunter2" not in found[0]


@pytest.mark.parametrize("written, env, replicas", [("3", {}, 3), ("${N}", {"N": "12"}, 12), ("${N:-2}", {}, 2)])
def test_store_replicas_may_come_from_the_environment(written, env, replicas):
    assert parse_policy(BASE + f"store:\n  replicas: {written}\n", env=env).store.replicas == replicas


@pytest.mark.parametrize("value, shown", [("0", "'0'"), ("-1", "'-1'"), ("three", "'${N}'")])
def test_a_replica_count_from_the_environment_must_be_a_positive_number(value, shown):
    """Values under 4 characters are no secrets and are shown; longer ones only by name."""
    found = errors(BASE + "store:\n  replicas: ${N}\n", {"N": value})
    assert found == [f"<string>:9: store.replicas: must be a whole number greater than 0, got {shown}"]
