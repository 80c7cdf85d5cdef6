"""Providers reached through litellm: a provider that cannot be reached is a 502 naming the
deployment (or the next candidate's answer), never litellm's 500 with the upstream's address."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from proxy.simulate.server import RunningSimulator
from tests.support import free_port, proxy_from_yaml

pytestmark = pytest.mark.timeout(60)


def _policy(base_url: str, fallback_url: str | None = None) -> str:
    fallback = f"  - {{name: spare, provider: openai, model: m, base_url: '{fallback_url}/v1'}}\n" if fallback_url else ""
    return f"""\
version: 1
auth: open
deployments:
  - {{name: claude, provider: anthropic, model: claude-sim, base_url: '{base_url}', timeouts: {{connect_s: 2}}}}
{fallback}routes:
  - {{name: deep, candidates: [claude{', spare' if fallback_url else ''}]}}
"""


def _chat(url: str) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", timeout=30,
                      json={"model": "deep", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})


@pytest.mark.parametrize("where", ["refused", "untrusted-tls"])
def test_an_unreachable_litellm_provider_is_a_502_without_its_address(where: str, tmp_path: Path,
                                                                     tls_sim: RunningSimulator,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    base = f"http://127.0.0.1:{free_port()}" if where == "refused" else tls_sim.base_url.removesuffix("/v1")
    with proxy_from_yaml(tmp_path, _policy(base)) as proxy:
        answer = _chat(proxy.url)
    assert answer.status_code == 502, answer.text
    error = answer.json()["error"]
    assert error["type"] == "server_error" and "claude" in error["message"]
    assert "127.0.0.1" not in answer.text and base not in answer.text


def test_an_unreachable_litellm_provider_falls_back_to_the_next_candidate(tmp_path: Path, gpu_sim) -> None:
    with proxy_from_yaml(tmp_path, _policy(f"http://127.0.0.1:{free_port()}", gpu_sim.url)) as laneway:
        answer = _chat(laneway.url)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-laneway-deployment"] == "spare"
    assert "claude=" in answer.headers["x-laneway-route-reason"]
