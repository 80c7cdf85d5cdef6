"""The simulator behind TLS: a client trusting the throwaway CA gets HTTPS and wss, one that
does not is refused, and Laneway's upstream pools trust it through SSL_CERT_FILE alone — the
only setting bench/websocket_wan.py gives Laneway for its upstream."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from proxy.simulate.server import RunningSimulator
from proxy.simulate.tls import TlsFiles
from proxy.upstream.http_pool import Origin, OriginPool
from proxy.upstream.ws_pool import SocketPool

pytestmark = pytest.mark.timeout(30)


def test_https_and_wss_for_a_client_that_trusts_the_ca(tls_sim: RunningSimulator, tls_files: TlsFiles) -> None:
    assert tls_sim.base_url.startswith("https://127.0.0.1:")
    trust = ssl.create_default_context(cafile=tls_files.ca)
    answer = httpx.post(tls_sim.base_url + "/responses", json={"model": "m", "input": "hi"}, verify=trust)
    assert answer.status_code == 200 and answer.json()["status"] == "completed"
    with connect(tls_sim.base_url.replace("https", "wss") + "/responses", ssl=trust) as ws:
        ws.send(json.dumps({"type": "response.create", "model": "m", "input": "hi"}))
        while (event := json.loads(ws.recv(timeout=10)))["type"] != "response.completed":
            assert event["type"] != "error"


def test_a_client_without_the_ca_is_refused(tls_sim: RunningSimulator) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(tls_sim.base_url + "/models", verify=ssl.create_default_context(cafile=None))


def test_laneway_pools_trust_it_through_ssl_cert_file(tls_sim: RunningSimulator, tls_files: TlsFiles,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(Path(tls_files.ca)))

    async def both() -> tuple[int, bool]:
        pool = OriginPool(Origin.parse(tls_sim.base_url))
        origin = pool.origin
        head = (b"GET %s/models HTTP/1.1\r\nHost: %s\r\n\r\n" % (origin.base_path.encode(), origin.host_header))
        response = await pool.request(head, b"", connect_s=5, first_byte_s=5, idle_s=5)
        await response.read()
        sockets = SocketPool(tls_sim.base_url.replace("https", "wss") + "/responses", {}, 1, 5)
        ws = await sockets.acquire()
        sockets.close()
        return response.status, ws is not None

    assert asyncio.run(both()) == (200, True)
