"""A deployment's own CA bundle: its pools (HTTP and sockets) trust that CA and only it, without
``SSL_CERT_FILE``; contexts are shared per file and rebuilt when the file is rewritten."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import openai
import pytest

from proxy.call import UpstreamConnectError
from proxy.config.schema import Deployment
from proxy.simulate.server import RunningSimulator
from proxy.simulate.tls import TlsFiles, make_ca
from proxy.upstream.http_pool import Origin, UpstreamPools
from proxy.upstream.tls import client_context
from proxy.upstream.ws_pool import SocketPool, SocketPools
from tests.support import proxy_from_yaml

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def no_ssl_cert_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)


async def _get_models(pools: UpstreamPools, base_url: str, ca_file: str | None) -> int:
    pool = pools.get(Origin.parse(base_url), ca_file)
    head = b"GET %s/models HTTP/1.1\r\nHost: %s\r\n\r\n" % (pool.origin.base_path.encode(), pool.origin.host_header)
    response = await pool.request(head, b"", connect_s=5, first_byte_s=5, idle_s=5)
    await response.read()
    return response.status


def test_the_http_pool_trusts_the_deployments_ca_and_the_system_store_does_not(tls_sim: RunningSimulator,
                                                                               tls_files: TlsFiles) -> None:
    pools = UpstreamPools()
    assert asyncio.run(_get_models(pools, tls_sim.base_url, str(tls_files.ca))) == 200
    with pytest.raises(UpstreamConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(_get_models(pools, tls_sim.base_url, None))


def test_a_ca_file_trusts_its_own_ca_only(tls_sim: RunningSimulator, tmp_path: Path) -> None:
    other = make_ca(tmp_path)  # a valid bundle, but not the one that signed the simulator
    with pytest.raises(UpstreamConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(_get_models(UpstreamPools(), tls_sim.base_url, str(other.ca)))


def test_sockets_trust_the_deployments_ca(tls_sim: RunningSimulator, tls_files: TlsFiles) -> None:
    async def open_with(ca_file: str | None) -> bool:
        url = tls_sim.base_url.replace("https", "wss") + "/responses"
        pool = SocketPool(url, {}, 1, 5, ssl_context=client_context(ca_file) if ca_file else None)
        ws = await pool.acquire()
        pool.close()
        return ws is not None

    assert asyncio.run(open_with(str(tls_files.ca))) is True
    assert asyncio.run(open_with(None)) is False  # refused: the pool backs off and turns go over HTTP


def test_one_context_per_file_until_the_file_is_rewritten(tls_files: TlsFiles, tmp_path: Path) -> None:
    copy = tmp_path / "ca.pem"
    shutil.copy(tls_files.ca, copy)
    first = client_context(str(copy))
    assert client_context(str(copy)) is first
    copy.write_bytes(copy.read_bytes() + b"\n")  # a rotated bundle
    assert client_context(str(copy)) is not first


def test_laneway_serves_a_private_tls_provider_by_ca_file(tls_sim: RunningSimulator, tls_files: TlsFiles,
                                                          tmp_path: Path) -> None:
    """HTTP and socket deployments behind a private CA, the bundle shipped beside the policy."""
    shutil.copy(tls_files.ca, tmp_path / "private-ca.pem")
    text = f"""\
version: 1
auth: open
deployments:
  - {{name: http, provider: openai, model: m, base_url: "{tls_sim.base_url}", ca_file: private-ca.pem}}
  - {{name: sockets, provider: openai, model: m, base_url: "{tls_sim.base_url}", ca_file: private-ca.pem,
      websocket: true}}
routes:
  - {{name: plain, candidates: [http]}}
  - {{name: socketed, candidates: [sockets]}}
"""
    with proxy_from_yaml(tmp_path, text) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)
        chat = client.chat.completions.create(model="plain", messages=[{"role": "user", "content": "hi"}])
        assert chat.choices[0].message.content
        turn = client.responses.create(model="socketed", input="hi")
        assert turn.status == "completed"
        pools = proxy.app.state.sockets.pools  # the turn ran on a socket, not the HTTP fallback
        assert sum(pool.stats.turns for pool in pools.values()) == 1


def test_deployments_of_one_origin_and_trust_share_a_pool(tls_files: TlsFiles, tmp_path: Path) -> None:
    """Keep-alive connections are shared per origin across deployments and reloads; only another
    trust gets a pool of its own."""
    other = tmp_path / "other.pem"
    shutil.copy(tls_files.ca, other)
    pools = UpstreamPools()
    origin = Origin.parse("https://api.example.com/v1")
    assert pools.get(origin) is pools.get(origin)
    assert pools.get(origin, str(tls_files.ca)) is pools.get(origin, str(tls_files.ca))
    assert pools.get(origin, str(tls_files.ca)) is not pools.get(origin)
    assert pools.get(origin, str(other)) is not pools.get(origin, str(tls_files.ca))
    sockets = SocketPools()
    plain = Deployment("a", "openai", "m", "https://api.example.com/v1", websocket=True)
    private = Deployment("b", "openai", "m", "https://api.example.com/v1", websocket=True, ca_file=str(other))
    assert sockets.get(plain) is sockets.get(plain) and sockets.get(private) is sockets.get(private)
    assert sockets.get(plain) is not sockets.get(private)
