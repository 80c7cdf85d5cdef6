"""The real Codex CLI (npm `@openai/codex`) runs a turn through Laneway: over Responses
WebSocket mode, and over HTTP after the upgrade is refused with 426.

The CLI is installed into the git-ignored `.tools/` on first use. If it cannot be installed
or run here, these tests fail and say why — they never skip.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import proxy_from_yaml, record_outcomes

CODEX_VERSION = "0.169.0"
ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools"
CODEX = TOOLS / "node_modules" / ".bin" / "codex"

POLICY = """\
version: 1
auth: open
server:
  websocket: {{enabled: {enabled}}}
deployments:
  - {{name: spark-wafer, provider: cerebras, model: sim-spark, base_url: "{wafer}/v1", hardware: wafer}}
routes:
  - {{name: codex, candidates: [spark-wafer]}}
"""

CONFIG = """\
model = "codex"
model_provider = "laneway"
[model_providers.laneway]
name = "laneway"
base_url = "{base_url}"
wire_api = "responses"
env_key = "LANEWAY_API_KEY"
supports_websockets = true
request_max_retries = 0
stream_max_retries = 0
"""


@pytest.fixture(scope="session")
def codex_bin() -> Path:
    """The pinned Codex CLI, installed with npm into .tools/ when missing."""
    if not _version_ok():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("Codex CLI test cannot run: `npm` is not installed (make system-deps installs it; "
                        "or apt-get install npm)", pytrace=False)
        result = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(TOOLS),
                                 f"@openai/codex@{CODEX_VERSION}"], capture_output=True, text=True, timeout=600)
        if result.returncode != 0 or not _version_ok():
            pytest.fail(f"Codex CLI test cannot run: installing @openai/codex@{CODEX_VERSION} with npm failed:\n"
                        f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}", pytrace=False)
    return CODEX


def _version_ok() -> bool:
    if not CODEX.exists():
        return False
    try:
        out = subprocess.run([str(CODEX), "--version"], capture_output=True, text=True, timeout=60)
    except OSError:
        return False
    return out.returncode == 0 and CODEX_VERSION in out.stdout


def run_codex(codex_bin: Path, tmp_path: Path, base_url: str) -> list[dict]:
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(CONFIG.format(base_url=base_url))
    env = {**os.environ, "CODEX_HOME": str(home), "LANEWAY_API_KEY": "lw-codex-test"}
    result = subprocess.run(
        [str(codex_bin), "exec", "--json", "--skip-git-repo-check", "--ephemeral", "-s", "read-only",
         "-m", "codex", "Say hello in five words."],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"codex exec failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def assert_turn_completed(events: list[dict]) -> None:
    kinds = [e["type"] for e in events]
    assert "turn.completed" in kinds and "turn.failed" not in kinds, kinds
    messages = [e["item"]["text"] for e in events if e["type"] == "item.completed"
                and e["item"]["type"] == "agent_message"]
    assert messages and messages[-1].split()[:3] == ["tok1", "tok2", "tok3"]
    usage = next(e["usage"] for e in events if e["type"] == "turn.completed")
    assert usage["output_tokens"] == len(messages[-1].split()) and usage["input_tokens"] > 0


def test_codex_exec_over_websocket(codex_bin, tmp_path, wafer_sim):
    with record_outcomes(proxy_from_yaml(tmp_path, POLICY.format(enabled="true", wafer=wafer_sim.url))) as proxy:
        events = run_codex(codex_bin, tmp_path, proxy.url + "/v1")
        stats = proxy.app.responses_socket.stats
        outcomes = proxy.outcomes
    assert_turn_completed(events)
    assert stats.connections_total >= 1 and stats.turns >= 1 and stats.errors == 0
    assert outcomes and {o.transport for o in outcomes} == {"websocket"}
    assert all(o.status == 200 and o.deployment == "spark-wafer" for o in outcomes)


def test_codex_exec_falls_back_to_http_on_426(codex_bin, tmp_path, wafer_sim):
    with record_outcomes(proxy_from_yaml(tmp_path, POLICY.format(enabled="false", wafer=wafer_sim.url))) as proxy:
        events = run_codex(codex_bin, tmp_path, proxy.url + "/v1")
        stats = proxy.app.responses_socket.stats
        outcomes = proxy.outcomes
    assert_turn_completed(events)
    assert stats.refused >= 1 and stats.connections_total == 0
    assert outcomes and {o.transport for o in outcomes} == {"http"}
    assert all(o.status == 200 and o.endpoint == "responses" for o in outcomes)
