"""Per-turn overhead and time-to-first-token of a 20-turn agentic conversation through Laneway.

One run starts the simulated wafer provider (60 ms TTFT, 1500 tok/s; it speaks HTTP and
Responses WebSocket mode) and `laneway serve` (one worker) with two deployments of it — one
plain HTTP, one `websocket: true` — then replays the same conversation (each turn adds a
~1 KB tool result and asks for 24 tokens) in rounds, interleaving:

  direct-http  HTTP straight to the simulator, full context every turn     (floor for HTTP)
  direct-ws    one WebSocket straight to the simulator, previous_response_id (floor: model time)
  (a) http     HTTP client -> Laneway -> HTTP upstream, full context every turn
  (b) ws       WebSocket client -> Laneway (previous_response_id; Laneway expands) -> HTTP upstream
  (b+) ws-ws   WebSocket client -> Laneway -> pooled upstream socket
  (c) http-ws  HTTP client -> Laneway -> pooled upstream socket ("upgrade")

Per-turn overhead = median turn time minus direct-ws's (what the simulated model itself
takes); the proxy's CPU per turn comes from /proc. HTTP clients use a keep-alive pool.

    .venv/bin/python bench/websocket.py [--conversations 10] [--deflate]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import uvloop
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.overhead import cpu_seconds, free_port, wait_listening  # noqa: E402
from proxy.upstream.http_pool import Origin, OriginPool  # noqa: E402

TURNS = 20
OUTPUT_TOKENS = 24  # 16 ms of decode at 1500 tok/s: clear of the simulator's 10 ms pacing steps
TOOL_RESULT = "line of tool output: src/proxy/module.py passes its checks\n" * 18  # ~1 KB


def user_item(turn: int) -> dict:
    return {"role": "user", "content": f"turn {turn}: here is the tool result\n{TOOL_RESULT}"}


class HttpClient:
    """Responses over HTTP: the whole conversation in every request."""

    def __init__(self, base_url: str, model: str) -> None:
        origin = Origin.parse(base_url)
        self.pool = OriginPool(origin, max_idle=8)
        self.head = (b"POST %s/responses HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer bench\r\n" % (origin.base_path.encode(), origin.host_header))
        self.model = model

    async def conversation(self) -> list[tuple[float, float]]:
        items: list[dict] = []
        out = []
        for turn in range(TURNS):
            items.append(user_item(turn))
            body = orjson.dumps({"model": self.model, "input": items, "max_output_tokens": OUTPUT_TOKENS, "stream": True})
            started = time.perf_counter()
            response = await self.pool.request(self.head + b"Content-Length: %d\r\n\r\n" % len(body), body,
                                                connect_s=5, first_byte_s=30, idle_s=30)
            first = 0.0
            tail = b""
            async for chunk in response.iter_body():
                if not first and b"output_text.delta" in chunk:
                    first = time.perf_counter() - started
                tail = (tail + chunk)[-65536:]
            total = time.perf_counter() - started
            if response.status != 200 or b"response.completed" not in tail:
                raise SystemExit(f"{self.model}: turn {turn} failed (HTTP {response.status})")
            items.append({"role": "assistant", "content": "tok " * OUTPUT_TOKENS})
            out.append((total, first))
        return out


class WsClient:
    """Responses WebSocket mode: one socket, only the new items each turn."""

    def __init__(self, url: str, model: str, deflate: bool) -> None:
        self.url = url
        self.model = model
        self.compression = "deflate" if deflate else None

    async def conversation(self) -> list[tuple[float, float]]:
        out = []
        previous = None
        async with connect(self.url, additional_headers={"Authorization": "Bearer bench"},
                           compression=self.compression, max_size=None) as ws:
            for turn in range(TURNS):
                event = {"type": "response.create", "model": self.model, "input": [user_item(turn)],
                         "max_output_tokens": OUTPUT_TOKENS}
                if previous:
                    event["previous_response_id"] = previous
                started = time.perf_counter()
                await ws.send(orjson.dumps(event), text=True)
                first = 0.0
                while True:
                    frame = await ws.recv(decode=False)
                    if not first and b'"response.output_text.delta"' in frame[:40]:
                        first = time.perf_counter() - started
                    if frame.startswith(b'{"type":"response.completed"'):
                        previous = orjson.loads(frame)["response"]["id"]
                        break
                    if frame.startswith(b'{"type":"error"'):
                        raise SystemExit(f"{self.model}: turn {turn} failed: {frame[:300]!r}")
                out.append((time.perf_counter() - started, first))
        return out


async def measure(clients: dict[str, object], proxy_pid: int, conversations: int) -> dict[str, dict[str, float]]:
    for client in clients.values():  # warm up: connections, lazy imports, the upstream socket pool
        await client.conversation()
    turns: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
    cpu: dict[str, float] = {name: 0.0 for name in clients}
    for _ in range(conversations):
        for name, client in clients.items():
            before = cpu_seconds(proxy_pid)
            turns[name] += await client.conversation()
            cpu[name] += cpu_seconds(proxy_pid) - before
    out = {}
    for name, values in turns.items():
        out[name] = {
            "turn_ms": statistics.median(t for t, _ in values) * 1e3,
            "ttft_ms": statistics.median(f for _, f in values) * 1e3,
            "proxy_cpu_ms": cpu[name] / len(values) * 1e3,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=10, help="measured 20-turn conversations per mode")
    parser.add_argument("--deflate", action="store_true", help="negotiate permessage-deflate on client sockets")
    args = parser.parse_args()

    sim_port, proxy_port = free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}/v1"
    policy = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    policy.write(
        "version: 1\nauth: open\ndeployments:\n"
        f"  - {{name: http-wafer, provider: cerebras, model: sim-wafer, base_url: '{sim_url}', hardware: wafer}}\n"
        f"  - {{name: ws-wafer, provider: cerebras, model: sim-wafer, base_url: '{sim_url}', hardware: wafer,"
        " websocket: true}\n"
        "routes:\n  - {name: plain, candidates: [http-wafer]}\n  - {name: upgraded, candidates: [ws-wafer]}\n"
    )
    policy.close()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    sim = subprocess.Popen([sys.executable, "-m", "proxy.simulate", "--profile", "wafer", "--port", str(sim_port)],
                           env=env, stdout=subprocess.DEVNULL)
    proxy = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--policy", policy.name,
                              "--port", str(proxy_port), "--log-level", "warning"], env=env)
    proxy_http = f"http://127.0.0.1:{proxy_port}/v1"
    proxy_ws = f"ws://127.0.0.1:{proxy_port}/v1/responses"
    try:
        wait_listening(sim_port, sim)
        wait_listening(proxy_port, proxy)
        clients = {
            "direct-http": HttpClient(sim_url, "sim-wafer"),
            "direct-ws": WsClient(f"ws://127.0.0.1:{sim_port}/v1/responses", "sim-wafer", args.deflate),
            "(a) http": HttpClient(proxy_http, "plain"),
            "(b) ws": WsClient(proxy_ws, "plain", args.deflate),
            "(b+) ws-ws": WsClient(proxy_ws, "upgraded", args.deflate),
            "(c) http-ws": HttpClient(proxy_http, "upgraded"),
        }
        results = uvloop.run(measure(clients, proxy.pid, args.conversations))
    finally:
        for proc in (proxy, sim):
            proc.terminate()
            proc.wait(10)
        os.unlink(policy.name)

    floor = results["direct-ws"]["turn_ms"]
    base = results["(a) http"]["turn_ms"] - floor
    print(f"{TURNS}-turn conversations x {args.conversations} per mode, {OUTPUT_TOKENS} output tokens/turn, "
          f"wafer profile; client deflate={'on' if args.deflate else 'off'}")
    print(f"{'mode':14s} {'turn p50 ms':>12s} {'TTFT p50 ms':>12s} {'overhead ms':>12s} {'vs (a)':>8s} {'proxy CPU ms/turn':>18s}")
    for name, row in results.items():
        overhead = row["turn_ms"] - floor
        cut = "" if name.startswith("direct") or base <= 0 else f"{(1 - overhead / base) * 100:+.0f}%"
        print(f"{name:14s} {row['turn_ms']:12.2f} {row['ttft_ms']:12.2f} {overhead:12.2f} {cut:>8s} "
              f"{'' if name.startswith('direct') else format(row['proxy_cpu_ms'], '.3f'):>18s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
