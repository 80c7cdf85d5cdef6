"""Run real ASGI servers (proxy, simulators) on free loopback ports inside the test process."""
from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import uvicorn
import uvloop

from proxy.api.app import LanewayApp
from proxy.api.http_server import http_protocol
from proxy.api.state import ProxyState
from proxy.api.ws_server import UVICORN_WS
from proxy.config import load_policy
from proxy.config.schema import ServerSettings
from proxy.simulate.profiles import get_profile
from proxy.simulate.provider import build_app


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: all are held while they are picked, since the kernel may hand a
    just-released port out again (two servers of one test were once given the same port)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class ServerThread:
    """A uvicorn server in a background thread with its own uvloop; a context manager.

    Served as ``laneway serve`` serves: the edge protocol with the policy's ``server`` limits."""

    def __init__(self, app, lifespan: str = "on", ws: str = UVICORN_WS, server: ServerSettings = ServerSettings()) -> None:
        self.app = app
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, loop="none", http=http_protocol(server), ws=ws, lifespan=lifespan,
                                log_level="warning", timeout_graceful_shutdown=1, timeout_keep_alive=server.keep_alive_s)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self.server.serve(sockets=[self.sock]))
        loop.close()

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("server thread died during startup")
            threading.Event().wait(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def simulator(profile: str = "instant", **overrides: object) -> ServerThread:
    return ServerThread(build_app(get_profile(profile, **overrides)), lifespan="off")


def proxy_from_yaml(tmp_path: Path, text: str, name: str = "policy.yaml", ws: str = UVICORN_WS) -> ServerThread:
    """A Laneway proxy serving the policy ``text`` (written to ``tmp_path``)."""
    path = tmp_path / name
    path.write_text(text)
    policy = load_policy(path)
    return ServerThread(LanewayApp(ProxyState(policy)), ws=ws, server=policy.server)


def record_outcomes(server: ServerThread) -> ServerThread:
    """Collect every finished request's Outcome on ``server.outcomes`` (what the ledger and metrics see)."""
    server.outcomes = []
    server.app.state.observers.append(server.outcomes.append)
    return server
