"""The real Codex CLI runs a tool-calling turn against the simulator — directly and through
Laneway, over HTTP and over Responses WebSocket mode: the model calls Codex's shell tool
(``exec_command``), Codex runs ``echo hi`` and sends the output back, the model answers."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from proxy.simulate import TOOL_MARKER
from tests.support import proxy_from_yaml
from tests.e2e.test_codex_cli import POLICY, codex_bin  # noqa: F401  (the pinned CLI, installed on first use)

pytestmark = pytest.mark.timeout(180)

CONFIG = """\
model = "codex"
model_provider = "under-test"
[model_providers.under-test]
name = "under-test"
base_url = "{base_url}"
wire_api = "responses"
env_key = "LANEWAY_API_KEY"
supports_websockets = {websockets}
request_max_retries = 0
stream_max_retries = 0
"""


def run_tool_turn(codex: Path, tmp_path: Path, base_url: str, websockets: bool) -> list[dict]:
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(CONFIG.format(base_url=base_url, websockets=str(websockets).lower()))
    env = {**os.environ, "CODEX_HOME": str(home), "LANEWAY_API_KEY": "lw-codex-test"}
    result = subprocess.run(
        [str(codex), "exec", "--json", "--skip-git-repo-check", "--ephemeral", "-s", "read-only", "-m", "codex",
         f"Run a command: {TOOL_MARKER}"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=150, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"codex exec failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def assert_tool_turn(events: list[dict]) -> None:
    kinds = [e["type"] for e in events]
    assert "turn.completed" in kinds and "turn.failed" not in kinds, kinds
    done = [e["item"] for e in events if e["type"] == "item.completed"]
    command = next(i for i in done if i["type"] == "command_execution")
    assert "echo hi" in command["command"] and command["exit_code"] == 0
    assert command["aggregated_output"].splitlines()[-1] == "hi"
    answer = [i for i in done if i["type"] == "agent_message"]
    assert answer and answer[-1]["text"].split()[:2] == ["tok1", "tok2"]
    assert done.index(command) < done.index(answer[-1])


@pytest.mark.parametrize("websockets", [False, True], ids=["http", "websocket"])
def test_codex_tool_turn_against_the_simulator(codex_bin, tmp_path, wafer_sim, websockets):  # noqa: F811
    assert_tool_turn(run_tool_turn(codex_bin, tmp_path, wafer_sim.url + "/v1", websockets))
    if websockets:
        assert wafer_sim.app.websocket.turns >= 2


@pytest.mark.parametrize("websockets", [False, True], ids=["http", "websocket"])
def test_codex_tool_turn_through_laneway(codex_bin, tmp_path, wafer_sim, websockets):  # noqa: F811
    policy = POLICY.format(enabled=str(websockets).lower(), wafer=wafer_sim.url)
    with proxy_from_yaml(tmp_path, policy) as proxy:
        assert_tool_turn(run_tool_turn(codex_bin, tmp_path, proxy.url + "/v1", websockets))


CLAUDE_POLICY = """\
version: 1
auth: open
server:
  websocket: {{enabled: {enabled}}}
deployments:
  - {{name: claude-wafer, provider: anthropic, model: claude-sim, base_url: "{wafer}", hardware: wafer}}
routes:
  - {{name: codex, candidates: [claude-wafer]}}
"""


@pytest.mark.parametrize("websockets", [False, True], ids=["http", "websocket"])
def test_codex_tool_turn_through_laneway_to_anthropic(codex_bin, tmp_path, wafer_sim, websockets):  # noqa: F811
    """Codex (Responses only) on an Anthropic Messages deployment: Laneway translates both ways."""
    policy = CLAUDE_POLICY.format(enabled=str(websockets).lower(), wafer=wafer_sim.url)
    with proxy_from_yaml(tmp_path, policy) as proxy:
        assert_tool_turn(run_tool_turn(codex_bin, tmp_path, proxy.url + "/v1", websockets))
    by_model = httpx.get(wafer_sim.url + "/sim/stats").json()["by_model"]
    assert by_model["claude-sim"]["requests"] >= 2, "the call and the answer both reached /v1/messages"
