"""Throwaway Redis servers for tests: a standalone server or a 3-master Cluster on free ports.

Nothing here touches a server the test did not start (never 127.0.0.1:6379). Servers keep no
data on disk (``--save "" --appendonly no``) and run in a temporary directory. Use them as
context managers or through the pytest fixtures in your own test module::

    from tests.redis_support import RedisServer, RedisCluster

    with RedisServer() as server:          # server.url -> "redis://127.0.0.1:<port>/0"
        server.stop(); server.start()      # restart on the same port (a Redis outage)
    with RedisCluster() as cluster:        # cluster.url -> any master; use a cluster client
        ...
"""
from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too; Redis needs it to be <= 55535."""
    for _ in range(200):
        port = random.randint(20000, 55535)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` child process; ``extra`` adds command-line options."""

    def __init__(self, port: int | None = None, extra: tuple[str, ...] = (), workdir: Path | None = None) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed; run `make system-deps` (Debian package redis-server)")
        self.port = port or free_port()
        self.extra = extra
        self._own_dir = workdir is None
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="laneway-redis-"))
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not _ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Kill the server (no shutdown save): to the proxy it looks like Redis went away."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def cli(self, *args: str) -> str:
        """Run ``redis-cli`` against this server; returns its stdout."""
        out = subprocess.run([REDIS_CLI, "-p", str(self.port), *args], capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class RedisCluster:
    """``masters`` cluster-enabled servers joined with ``redis-cli --cluster create`` (no replicas)."""

    def __init__(self, masters: int = 3) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="laneway-redis-cluster-"))
        self.nodes: list[RedisServer] = []
        for index in range(masters):
            node_dir = self.dir / str(index)
            node_dir.mkdir()
            self.nodes.append(RedisServer(port=free_cluster_port(), extra=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                                 "--cluster-node-timeout", "2000"), workdir=node_dir))

    @property
    def url(self) -> str:
        return self.nodes[0].url.rsplit("/", 1)[0]

    def start(self) -> "RedisCluster":
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run([REDIS_CLI, "--cluster", "create", *addresses, "--cluster-yes"],
                       capture_output=True, text=True, timeout=30, check=True)
        deadline = time.monotonic() + 15
        while not all("cluster_state:ok" in node.cli("cluster", "info") for node in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("redis cluster did not reach cluster_state:ok")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> "RedisCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# pytest fixtures: import them into a test module (``from tests.redis_support import redis_server``).


@pytest.fixture(scope="session")
def redis_server():
    """One throwaway standalone Redis for the session; tests use unique key names, never FLUSHALL."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster():
    """A throwaway 3-master Redis Cluster for the session."""
    with RedisCluster() as cluster:
        yield cluster
