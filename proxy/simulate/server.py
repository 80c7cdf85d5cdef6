"""Running the simulator under uvicorn: in a background thread (tests, benchmarks) or as a CLI."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

import uvicorn

from .profiles import Profile
from .provider import SimulatorApp, build_app
from .tls import TlsFiles


def bind_socket(host: str, port: int) -> socket.socket:
    """Listening socket bound before uvicorn starts, so port=0 resolves to a real port up front."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def make_config(app: SimulatorApp, tls: TlsFiles | None = None, **extra: Any) -> uvicorn.Config:
    """uvicorn settings; with ``tls`` it serves HTTPS and wss, as a real provider does."""
    if tls is not None:
        extra.update(ssl_certfile=str(tls.cert), ssl_keyfile=str(tls.key))
    return uvicorn.Config(app, loop="uvloop", http="httptools", log_level="warning", lifespan="off",
                          access_log=False, timeout_graceful_shutdown=1, **extra)


class _Server(uvicorn.Server):
    """uvicorn.Server that runs a callback once it accepts connections."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._on_started()


class RunningSimulator:
    """A simulator served from a background thread with its own uvloop event loop."""

    def __init__(self, profile: Profile, host: str = "127.0.0.1", port: int = 0, tls: TlsFiles | None = None) -> None:
        self.app = build_app(profile)
        self.host = host
        self.scheme = "http" if tls is None else "https"
        self._sock = bind_socket(host, port)
        self.port: int = self._sock.getsockname()[1]
        self._ready = threading.Event()
        # log_config=None: do not reconfigure the host process's logging.
        self._server = _Server(make_config(self.app, tls, log_config=None), self._ready.set)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name=f"simulate-{profile.name}-{self.port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            self.stop()
            raise RuntimeError("simulator did not start within 10 s")

    @property
    def root_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI-style base URL (ends in /v1)."""
        return self.root_url + "/v1"

    @property
    def stats(self) -> dict[str, Any]:
        return self.app.stats.snapshot()

    def stop(self) -> None:
        """Stop serving; in-flight requests (hung or streaming) are cut off, not awaited."""
        self._server.should_exit = True
        self._server.force_exit = True
        self._thread.join(10)
        self._sock.close()

    def __enter__(self) -> RunningSimulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_thread(profile: Profile, host: str = "127.0.0.1", port: int = 0,
                    tls: TlsFiles | None = None) -> RunningSimulator:
    """Start serving `profile` on host:port (0 = a free port) and return once it accepts connections."""
    return RunningSimulator(profile, host, port, tls)


def serve_forever(profile: Profile, host: str, port: int, tls: TlsFiles | None = None,
                  keep_alive_s: int = 5) -> None:
    """Serve in the foreground until SIGINT/SIGTERM; prints one line once listening."""
    sock = bind_socket(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    scheme = "http" if tls is None else "https"

    def announce() -> None:
        print(f"simulate: {profile.name} listening on {scheme}://{shown}:{bound}", flush=True)

    config = make_config(build_app(profile), tls, timeout_keep_alive=keep_alive_s)
    _Server(config, announce).run(sockets=[sock])
