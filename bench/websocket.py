"""Laneway's per-turn overhead in a 20-turn agentic conversation: HTTP vs Responses WebSocket mode.

One run starts the simulated wafer provider (60 ms TTFT, 1500 tok/s; it speaks HTTP and
Responses WebSocket mode, remembering each socket's last response) and `laneway serve` (one
worker) with two deployments of it — one plain HTTP, one `websocket: true` — then replays the
same seeded coding-agent conversation in rounds, interleaving the modes:

  direct-http  HTTP straight to the simulator, full context every turn
  direct-ws    one socket straight to the simulator, previous_response_id + new items
  (a) http     HTTP client -> Laneway -> HTTP upstream, full context every turn
  (b) ws       WebSocket client -> Laneway -> HTTP upstream (Laneway expands the context)
  (b+) ws-ws   WebSocket client -> Laneway -> the conversation's pinned upstream socket
               (Laneway forwards previous_response_id + new items)
  (c) http-ws  HTTP client -> Laneway -> pooled upstream socket, full context every turn
  (b+) no-z, (c) no-z  the same through a deployment with `websocket_compression: none`
               (upstream sockets without permessage-deflate, which costs CPU per turn)
  (a0) http-new  (a) without the history: each turn carries only what a WebSocket turn carries
               (instructions, tools, the new items). Not a client mode but a floor: (a) - (a0)
               is the per-turn work that depends on re-sending the history, the most any
               transport can take away from (a).

The conversation (seeded, `--seed`): 10 KB of instructions and 16 tool schemas (28.6 KB together)
sent on every turn, as Codex does on both transports (WebSocket mode trims only `input`); a user
task, then each turn adds one tool output of 2-6 KB (shell/test/file output). HTTP clients send
the whole history each turn (task, every assistant reply, every tool output); WebSocket clients
send previous_response_id + the new tool output. Each turn asks for 24 output tokens.

Laneway's per-turn overhead is measured two ways, per turn, reported as p50 and p99:
  proxy CPU  CPU time of the proxy process (all threads, /proc/<pid>/task/*/schedstat) between
             sending a turn and receiving its response.completed — the headline figure;
  latency    the turn's time minus the median time of the same turn index sent straight to the
             simulator over the same client transport (direct-http for HTTP clients, direct-ws
             for WebSocket clients).

    .venv/bin/python bench/websocket.py [--conversations 10] [--seed 7] [--deflate]
"""
from __future__ import annotations

import argparse
import os
import random
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

from bench.overhead import free_port, wait_listening  # noqa: E402
from proxy.upstream.http_pool import Origin, OriginPool  # noqa: E402

TURNS = 20
OUTPUT_TOKENS = 24  # 16 ms of decode at 1500 tok/s: clear of the simulator's 10 ms pacing steps
INSTRUCTIONS_BYTES = 10_000
TOOLS = ("shell", "apply_patch", "read_file", "list_dir", "grep_files", "update_plan", "view_image", "web_search",
         "run_tests", "git_diff", "git_log", "open_url", "write_file", "find_symbol", "lint", "format_code")
TOOL_OUTPUT_BYTES = (2_000, 6_000)
_WORDS = ("the", "agent", "must", "repository", "file", "change", "test", "command", "output", "user", "patch",
          "before", "after", "never", "always", "prefer", "sandbox", "approval", "workspace", "directory", "run",
          "concise", "summary", "plan", "step", "error", "exit", "code", "function", "module", "review")


class Conversation:
    """The seeded agentic payload: static instructions + tools, a task, and one tool output per turn."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.instructions = self._text(rng, INSTRUCTIONS_BYTES)
        self.tools = [self._tool(rng, name) for name in TOOLS]
        self.task = {"type": "message", "role": "user",
                     "content": [{"type": "input_text", "text": "Fix the failing tests in proxy/routing and explain the change."}]}
        self.outputs = [self._tool_output(rng, turn) for turn in range(TURNS)]

    @staticmethod
    def _text(rng: random.Random, size: int) -> str:
        out, n = [], 0
        while n < size:
            line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 16))) + ".\n"
            out.append(line)
            n += len(line)
        return "".join(out)

    def _tool(self, rng: random.Random, name: str) -> dict:
        props = {f"{name}_arg{i}": {"type": rng.choice(("string", "integer", "boolean")),
                                    "description": self._text(rng, 60).strip()} for i in range(5)}
        return {"type": "function", "name": name, "description": self._text(rng, 200).strip(), "strict": False,
                "parameters": {"type": "object", "properties": props, "required": list(props)[:2],
                               "additionalProperties": False}}

    def _tool_output(self, rng: random.Random, turn: int) -> dict:
        size = rng.randint(*TOOL_OUTPUT_BYTES)
        lines, n = [], 0
        while n < size:
            line = f"proxy/routing/m{rng.randint(0, 99):02d}.py:{rng.randint(1, 900)}: {self._text(rng, 40).strip()}\n"
            lines.append(line)
            n += len(line)
        return {"type": "function_call_output", "call_id": f"call_{turn:03d}",
                "output": orjson.dumps({"output": "".join(lines), "metadata": {"exit_code": rng.choice((0, 1))}}).decode()}

    def request(self, model: str, items: list) -> dict:
        return {"model": model, "instructions": self.instructions, "tools": self.tools, "tool_choice": "auto",
                "parallel_tool_calls": False, "store": False, "input": items, "max_output_tokens": OUTPUT_TOKENS}

    def first_input(self, turn: int) -> list:
        return [self.task, self.outputs[0]] if turn == 0 else [self.outputs[turn]]


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` in ns (schedstat: finer than /proc/<pid>/stat's ticks)."""
    total = 0
    for task in os.scandir(f"/proc/{pid}/task"):
        with open(f"{task.path}/schedstat", "rb") as f:
            total += int(f.read().split(None, 1)[0])
    return total


# One sample per turn: (turn index, seconds, time to first token, proxy CPU ns, request bytes)
Sample = tuple[int, float, float, int, int]


class HttpClient:
    """Responses over HTTP, like Codex without WebSocket: the whole conversation in every request."""

    def __init__(self, base_url: str, model: str, convo: Conversation, proxy_pid: int | None,
                 history: bool = True) -> None:
        origin = Origin.parse(base_url)
        self.pool = OriginPool(origin, max_idle=8)
        self.head = (b"POST %s/responses HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer bench\r\n" % (origin.base_path.encode(), origin.host_header))
        self.model = model
        self.convo = convo
        self.pid = proxy_pid
        self.history = history

    async def conversation(self) -> list[Sample]:
        items: list[dict] = []
        out = []
        for turn in range(TURNS):
            items = items + self.convo.first_input(turn) if self.history else self.convo.first_input(turn)
            body = orjson.dumps({**self.convo.request(self.model, items), "stream": True})
            cpu = cpu_ns(self.pid) if self.pid else 0
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
            cpu = cpu_ns(self.pid) - cpu if self.pid else 0
            done = tail.rfind(b"data: {\"type\":\"response.completed\"")
            if response.status != 200 or done < 0:
                raise SystemExit(f"{self.model}: turn {turn} failed (HTTP {response.status}): {tail[-300:]!r}")
            completed = orjson.loads(tail[done + 6 : tail.index(b"\n\n", done)])
            if self.history:
                items += completed["response"]["output"]  # the assistant's reply joins the history
            out.append((turn, total, first, cpu, len(body)))
        return out


class WsClient:
    """Responses WebSocket mode, like Codex with supports_websockets: previous_response_id + new items."""

    def __init__(self, url: str, model: str, convo: Conversation, proxy_pid: int | None, deflate: bool) -> None:
        self.url = url
        self.model = model
        self.convo = convo
        self.pid = proxy_pid
        self.compression = "deflate" if deflate else None

    async def conversation(self) -> list[Sample]:
        out = []
        previous = None
        async with connect(self.url, additional_headers={"Authorization": "Bearer bench"},
                           compression=self.compression, max_size=None) as ws:
            for turn in range(TURNS):
                event = {"type": "response.create", **self.convo.request(self.model, self.convo.first_input(turn))}
                if previous:
                    event["previous_response_id"] = previous
                frame = orjson.dumps(event)
                cpu = cpu_ns(self.pid) if self.pid else 0
                started = time.perf_counter()
                await ws.send(frame, text=True)
                first = 0.0
                while True:
                    data = await ws.recv(decode=False)
                    if not first and b'"response.output_text.delta"' in data[:40]:
                        first = time.perf_counter() - started
                    if data.startswith(b'{"type":"response.completed"'):
                        previous = orjson.loads(data)["response"]["id"]
                        break
                    if data.startswith(b'{"type":"error"'):
                        raise SystemExit(f"{self.model}: turn {turn} failed: {data[:300]!r}")
                total = time.perf_counter() - started
                cpu = cpu_ns(self.pid) - cpu if self.pid else 0
                out.append((turn, total, first, cpu, len(frame)))
        return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(clients: dict, conversations: int) -> dict[str, list[Sample]]:
    for client in clients.values():  # warm up: connections, lazy imports, the upstream socket pool
        await client.conversation()
    samples: dict[str, list[Sample]] = {name: [] for name in clients}
    for _ in range(conversations):
        for name, client in clients.items():
            samples[name] += await client.conversation()
    return samples


def report(samples: dict[str, list[Sample]], args: argparse.Namespace, convo: Conversation) -> None:
    # the model's own time per turn index, per client transport
    floor = {name: {t: statistics.median(s[1] for s in samples[name] if s[0] == t) for t in range(TURNS)}
             for name in ("direct-http", "direct-ws")}
    static = len(orjson.dumps({"instructions": convo.instructions, "tools": convo.tools}))
    print(f"{TURNS}-turn agentic conversations x {args.conversations} per mode (seed {args.seed}); "
          f"instructions + tools {static / 1000:.1f} KB on every turn, tool outputs "
          f"{TOOL_OUTPUT_BYTES[0] // 1000}-{TOOL_OUTPUT_BYTES[1] // 1000} KB per turn, {OUTPUT_TOKENS} output tokens; "
          f"wafer profile; client deflate={'on' if args.deflate else 'off'}")
    head = ("mode", "req KB p50", "turn ms p50", "TTFT ms p50", "CPU ms p50", "CPU ms p99", "lat+ ms p50", "lat+ ms p99")
    print(f"{head[0]:13s}" + "".join(f"{h:>13s}" for h in head[1:]))
    rows = {}
    for name, values in samples.items():
        direct = name.startswith("direct")
        base = floor["direct-ws" if name.startswith("(b") or name == "direct-ws" else "direct-http"]
        extra = [s[1] - base[s[0]] for s in values]
        cpu = [s[3] / 1e6 for s in values]
        rows[name] = (statistics.median(cpu), percentile(cpu, 0.99), statistics.median(extra), percentile(extra, 0.99))
        cells = [statistics.median(s[4] for s in values) / 1000, statistics.median(s[1] for s in values) * 1e3,
                 statistics.median(s[2] for s in values) * 1e3]
        cells += [None, None] if direct else [rows[name][0], rows[name][1]]
        # (a0) has no direct twin without history to subtract, so no added latency
        cells += [None, None] if direct or name.startswith("(a0)") else [rows[name][2] * 1e3, rows[name][3] * 1e3]
        print(f"{name:13s}" + "".join(f"{'' if c is None else format(c, '.2f'):>13s}" for c in cells))
    a = rows["(a) http"]
    floor_cut = (1 - rows["(a0) http-new"][0] / a[0]) * 100
    print(f"history-dependent share of (a): {floor_cut:.0f}% of its proxy CPU/turn p50 ((a) {a[0]:.2f} ms, "
          f"(a0) {rows['(a0) http-new'][0]:.2f} ms): the most a transport that skips the history can remove")
    for name in ("(b) ws", "(b+) ws-ws", "(c) http-ws", "(b+) no-z", "(c) no-z"):
        r = rows[name]
        print(f"{name} vs (a): proxy CPU/turn p50 {(r[0] / a[0] - 1) * 100:+.0f}%, p99 {(r[1] / a[1] - 1) * 100:+.0f}%; "
              f"added latency p50 {r[2] * 1e3:.2f} ms vs {a[2] * 1e3:.2f} ms")
    for pair in (("(b+) ws-ws", "(c) http-ws"), ("(b+) no-z", "(c) no-z")):
        sockets = ", ".join(f"{name} {rows[name][0]:.2f}" for name in pair)
        met = all(rows[name][0] <= a[0] for name in pair)
        print(f"upstream sockets: proxy CPU/turn p50 {sockets} vs (a) {a[0]:.2f} ms; goal (b+) and (c) <= (a): "
              f"{'MET' if met else 'NOT MET'}")
    best = max(("(b) ws", "(b+) ws-ws"), key=lambda n: 1 - rows[n][0] / a[0])
    cut = (1 - rows[best][0] / a[0]) * 100
    print(f"SUMMARY: client WebSocket {best} changes Laneway's per-turn overhead (proxy CPU/turn, p50) by {-cut:+.0f}% "
          f"vs (a) HTTP per turn ({rows[best][0]:.2f} vs {a[0]:.2f} ms); target -80%: {'MET' if cut >= 80 else 'NOT MET'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=10, help="measured 20-turn conversations per mode")
    parser.add_argument("--seed", type=int, default=7, help="seed of the generated conversation")
    parser.add_argument("--deflate", action="store_true", help="negotiate permessage-deflate on client sockets")
    args = parser.parse_args()
    convo = Conversation(args.seed)

    sim_port, proxy_port = free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}/v1"
    policy = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    policy.write(
        "version: 1\nauth: open\ndeployments:\n"
        f"  - {{name: http-wafer, provider: cerebras, model: sim-wafer, base_url: '{sim_url}', hardware: wafer}}\n"
        f"  - {{name: ws-wafer, provider: cerebras, model: sim-wafer, base_url: '{sim_url}', hardware: wafer,"
        " websocket: true}\n"
        f"  - {{name: ws-wafer-no-z, provider: cerebras, model: sim-wafer, base_url: '{sim_url}', hardware: wafer,"
        " websocket: true, websocket_compression: none}\n"
        "routes:\n  - {name: plain, candidates: [http-wafer]}\n  - {name: upgraded, candidates: [ws-wafer]}\n"
        "  - {name: upgraded-no-z, candidates: [ws-wafer-no-z]}\n"
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
        pid = proxy.pid
        clients = {
            "direct-http": HttpClient(sim_url, "sim-wafer", convo, None),
            "direct-ws": WsClient(f"ws://127.0.0.1:{sim_port}/v1/responses", "sim-wafer", convo, None, args.deflate),
            "(a) http": HttpClient(proxy_http, "plain", convo, pid),
            "(b) ws": WsClient(proxy_ws, "plain", convo, pid, args.deflate),
            "(b+) ws-ws": WsClient(proxy_ws, "upgraded", convo, pid, args.deflate),
            "(c) http-ws": HttpClient(proxy_http, "upgraded", convo, pid),
            "(b+) no-z": WsClient(proxy_ws, "upgraded-no-z", convo, pid, args.deflate),
            "(c) no-z": HttpClient(proxy_http, "upgraded-no-z", convo, pid),
            "(a0) http-new": HttpClient(proxy_http, "plain", convo, pid, history=False),
        }
        samples = uvloop.run(measure(clients, args.conversations))
    finally:
        for proc in (proxy, sim):
            proc.terminate()
            proc.wait(10)
        os.unlink(policy.name)
    report(samples, args, convo)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
