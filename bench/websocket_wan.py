"""What a client feels end to end across a WAN: does Laneway keep the provider's WebSocket gain?

Topology (everything on this machine; the WAN is the only slow hop, and every mode crosses it
exactly once each way):

  direct modes   client --WAN--> provider            (the client talks TLS to the provider)
  proxied modes  client --LAN--> Laneway --WAN--> provider   (Laneway beside the client, as a
                 sidecar or office gateway would be; the client <-> Laneway leg is plain loopback)

  provider  the simulator, `--profile agent` (wafer speed: 60 ms TTFT, 1500 tok/s) with its
            per-request overhead model on: a fresh request (HTTP, or a socket turn with the full
            context) waits `--request-overhead-ms` (50) + the TTFT before its first token, a socket
            turn continuing the connection's last response 20% of the overhead and 50% of the TTFT
            (the providers' published claims; docs/simulator.md). It serves HTTPS and wss with a
            throwaway CA it makes at start (`--tls-dir`: proxy/simulate/tls.py, the `openssl` CLI)
            and keeps idle HTTP connections 90 s, as providers' edges do for minutes (uvicorn's 5 s
            would make the first HTTP turn of every conversation reconnect while the other modes run).
  WAN       proxy.simulate.wan: a userspace TCP relay in its own process, `--rtt-ms` (40) split
            half each way, `--mbit` (50) per direction, delivered in order by a delay line; it
            counts the bytes each turn sends upstream (TLS records, headers and framing included).
            netem is not used: this kernel has no sch_netem.
  Laneway   `laneway serve`, one worker, trusting the CA through SSL_CERT_FILE (Python's default
            SSL context reads it, for the HTTP pool and the upstream sockets alike).

Modes, interleaved round by round, with the seeded 20-turn coding-agent conversation of
bench/websocket.py (imported, not copied; one conversation per `--seeds` value):

  direct-http   HTTP straight to the provider, the whole history every turn
  direct-ws     one socket straight to the provider, previous_response_id + new items
  (a) http      HTTP client -> Laneway -> HTTP upstream
  (b+) ws-ws    WebSocket client -> Laneway -> the conversation's pinned upstream socket
  (c) http-ws   HTTP client -> Laneway -> pooled upstream socket (full context every turn)
  direct-ws+z   direct-ws with permessage-deflate: not a goal, what compression does to the bytes
  (b+) no-z, (c) no-z   (b+) and (c) through a deployment with `websocket_compression: none`:
                the same modes before permessage-deflate on upstream sockets (the default)

Per turn: TTFT and turn time (p50, p95, p99 over every turn of every conversation), proxy CPU,
the time Laneway added (the turn's time minus the median time of the same turn of the same
conversation sent by its direct twin: direct-http for (a) and (c), direct-ws for (b+)),
and the bytes sent upstream per turn (the relay's client->provider count over a conversation /
20, median over conversations). Goals, printed MET / NOT MET:
  1. (b+) within 1 ms + 2% of direct-ws (turn time p50 and TTFT p50);
  2. (c) keeps >= 90% of direct-ws's gain over direct-http (turn time p50);
  3. upstream bytes per turn on sockets >= 80% below HTTP ((b+) and (c) vs (a), direct-ws vs direct-http).

    .venv/bin/python bench/websocket_wan.py [--conversations 4] [--seeds 7,8,9] [--rtt-ms 40] [--mbit 50]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.overhead import free_port, wait_listening
from bench.websocket import (
    TURNS,
    Conversation,
    HttpClient,
    Sample,
    WsClient,
    percentile,
)
from proxy.simulate.wan import CONNECTIONS, DOWN, UP, run_forever


class Run:
    """One mode's results: every turn's sample and, per conversation, the bytes it sent upstream."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.seeds: list[int] = []  # which conversation each sample belongs to (index into --seeds)
        self.up: list[float] = []  # bytes per turn, one value per conversation
        self.down: list[float] = []
        self.seconds: list[float] = []  # whole conversation


async def measure(clients: dict[str, list], rounds: int, counters) -> dict[str, Run]:
    for per_seed in clients.values():  # warm up: connections, lazy imports, the upstream socket pool
        await per_seed[0].conversation()
    runs = {name: Run() for name in clients}
    for _ in range(rounds):
        for i in range(len(next(iter(clients.values())))):
            for name, per_seed in clients.items():
                up, down = counters[UP], counters[DOWN]
                samples = await per_seed[i].conversation()
                run = runs[name]
                run.up.append((counters[UP] - up) / TURNS)
                run.down.append((counters[DOWN] - down) / TURNS)
                run.samples += samples
                run.seeds += [i] * len(samples)
                run.seconds.append(sum(s[1] for s in samples))
    return runs


TWIN = {"(a) http": "direct-http", "(b+) ws-ws": "direct-ws", "(c) http-ws": "direct-http",
        "(b+) no-z": "direct-ws", "(c) no-z": "direct-http"}


def report(runs: dict[str, Run], args: argparse.Namespace, connections: int) -> None:
    print(f"{TURNS}-turn agentic conversations, seeds {args.seeds} x {args.conversations} rounds per mode; "
          f"WAN {args.rtt_ms:g} ms RTT, {args.mbit:g} Mbit/s each way; provider `agent` profile, "
          f"{args.request_overhead_ms:g} ms overhead per fresh request; {connections} connections through the relay")
    # the direct twin's median time for each (conversation, turn): what Laneway adds is measured against it
    floor = {name: {key: statistics.median(s[1] for k, s in zip(runs[name].seeds, runs[name].samples)
                                           if (k, s[0]) == key)
                    for key in set(zip(runs[name].seeds, (s[0] for s in runs[name].samples)))}
             for name in ("direct-http", "direct-ws")}
    head = ("mode", "TTFT p50", "p95", "p99", "turn p50", "p95", "p99", "convo s p50", "up KB/turn", "down KB/turn",
            "CPU ms p50", "added p50", "added p99")
    print(f"{head[0]:12s}" + "".join(f"{h:>13s}" for h in head[1:]))
    rows = {}
    for name, run in runs.items():
        ttft = [s[2] * 1e3 for s in run.samples]
        turn = [s[1] * 1e3 for s in run.samples]
        cpu = [s[3] / 1e6 for s in run.samples]
        rows[name] = {"ttft": statistics.median(ttft), "turn": statistics.median(turn),
                      "up": statistics.median(run.up)}
        cells = [statistics.median(ttft), percentile(ttft, 0.95), percentile(ttft, 0.99),
                 statistics.median(turn), percentile(turn, 0.95), percentile(turn, 0.99),
                 statistics.median(run.seconds), statistics.median(run.up) / 1000, statistics.median(run.down) / 1000]
        if name in TWIN:
            twin = floor[TWIN[name]]
            added = [(s[1] - twin[(k, s[0])]) * 1e3 for k, s in zip(run.seeds, run.samples)]
            cells += [statistics.median(cpu), statistics.median(added), percentile(added, 0.99)]
        print(f"{name:12s}" + "".join(f"{c:13.2f}" for c in cells))

    def verdict(ok: bool) -> str:
        return "MET" if ok else "NOT MET"

    ws, bp = rows["direct-ws"], rows["(b+) ws-ws"]
    for key, label in (("turn", "turn time"), ("ttft", "TTFT")):
        allowed = 1 + 0.02 * ws[key]
        print(f"goal 1 ({label} p50): (b+) {bp[key]:.2f} ms vs direct-ws {ws[key]:.2f} ms, "
              f"{bp[key] - ws[key]:+.2f} ms (allowed +{allowed:.2f}): {verdict(bp[key] - ws[key] <= allowed)}")
    http, c = rows["direct-http"], rows["(c) http-ws"]
    gain = http["turn"] - ws["turn"]
    kept = (http["turn"] - c["turn"]) / gain if gain > 0 else 0.0
    print(f"goal 2 (turn time p50): direct-ws gains {gain:.2f} ms/turn over direct-http ({http['turn']:.2f} -> "
          f"{ws['turn']:.2f}); (c) {c['turn']:.2f} ms keeps {kept * 100:.0f}% (>= 90%): {verdict(kept >= 0.9)}")
    for sock, base in (("direct-ws", "direct-http"), ("direct-ws+z", "direct-http"), ("(b+) ws-ws", "(a) http"),
                       ("(c) http-ws", "(a) http"), ("(b+) no-z", "(a) http"), ("(c) no-z", "(a) http")):
        cut = 1 - rows[sock]["up"] / rows[base]["up"]
        print(f"goal 3 (upstream bytes/turn): {sock} {rows[sock]['up'] / 1000:.1f} KB vs {base} "
              f"{rows[base]['up'] / 1000:.1f} KB: {-cut * 100:+.0f}% (<= -80%): {verdict(cut >= 0.8)}")


def upstream_socket_events(port: int) -> dict[str, float]:
    """laneway_upstream_websocket_events by kind, from /metrics once the sampler has run (1 s)."""
    time.sleep(1.5)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    events = {}
    for line in text.splitlines():
        if line.startswith("laneway_upstream_websocket_events_total{"):
            labels, value = line.rsplit(" ", 1)
            events[labels.split('kind="', 1)[1].split('"', 1)[0]] = float(value)
    return events


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=4, help="measured rounds per seed and mode")
    parser.add_argument("--seeds", default="7,8,9", help="comma-separated seeds of the generated conversations")
    parser.add_argument("--rtt-ms", type=float, default=40.0)
    parser.add_argument("--mbit", type=float, default=50.0, help="bandwidth per direction, Mbit/s")
    parser.add_argument("--request-overhead-ms", type=float, default=50.0,
                        help="the provider's work per fresh request before prefill")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    convos = [Conversation(seed) for seed in seeds]

    tmp = tempfile.TemporaryDirectory(prefix="laneway-wan-")
    # The simulator makes a throwaway CA there; the bench's clients and Laneway trust it the way
    # Laneway trusts any upstream: Python's default SSL context, which reads SSL_CERT_FILE.
    os.environ["SSL_CERT_FILE"] = str(Path(tmp.name) / "ca.pem")
    sim_port, relay_port, proxy_port = free_port(), free_port(), free_port()
    provider = f"https://127.0.0.1:{relay_port}/v1"  # the provider as seen across the WAN
    policy = Path(tmp.name) / "policy.yaml"
    policy.write_text(
        "version: 1\nauth: open\ndeployments:\n"
        f"  - {{name: http-agent, provider: openai, model: sim-agent, base_url: '{provider}', hardware: wafer}}\n"
        f"  - {{name: ws-agent, provider: openai, model: sim-agent, base_url: '{provider}', hardware: wafer,"
        " websocket: true}\n"
        f"  - {{name: ws-agent-no-z, provider: openai, model: sim-agent, base_url: '{provider}', hardware: wafer,"
        " websocket: true, websocket_compression: none}\n"
        "routes:\n  - {name: plain, candidates: [http-agent]}\n  - {name: upgraded, candidates: [ws-agent]}\n"
        "  - {name: upgraded-no-z, candidates: [ws-agent-no-z]}\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    sim = subprocess.Popen([sys.executable, "-m", "proxy.simulate", "--profile", "agent", "--port", str(sim_port),
                            "--request-overhead-ms", str(args.request_overhead_ms),
                            "--tls-dir", tmp.name, "--keep-alive-s", "90"], env=env, stdout=subprocess.DEVNULL)
    wait_listening(sim_port, sim)  # the CA exists once the simulator listens
    spawn = multiprocessing.get_context("spawn")
    counters = spawn.RawArray("q", 3)
    relay = spawn.Process(target=run_forever, args=(("127.0.0.1", sim_port), relay_port, args.rtt_ms, args.mbit,
                                                    counters), daemon=True)
    relay.start()
    proxy = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--policy", str(policy),
                              "--port", str(proxy_port), "--log-level", "warning"], env=env)
    proxy_http = f"http://127.0.0.1:{proxy_port}/v1"
    proxy_ws = f"ws://127.0.0.1:{proxy_port}/v1/responses"
    direct_ws = f"wss://127.0.0.1:{relay_port}/v1/responses"
    try:
        wait_listening(proxy_port, proxy)
        wait_listening(relay_port, sim, timeout=10)
        pid = proxy.pid
        clients = {
            "direct-http": [HttpClient(provider, "sim-agent", c, None) for c in convos],
            "direct-ws": [WsClient(direct_ws, "sim-agent", c, None, False) for c in convos],
            "direct-ws+z": [WsClient(direct_ws, "sim-agent", c, None, True) for c in convos],
            "(a) http": [HttpClient(proxy_http, "plain", c, pid) for c in convos],
            "(b+) ws-ws": [WsClient(proxy_ws, "upgraded", c, pid, False) for c in convos],
            "(c) http-ws": [HttpClient(proxy_http, "upgraded", c, pid) for c in convos],
            "(b+) no-z": [WsClient(proxy_ws, "upgraded-no-z", c, pid, False) for c in convos],
            "(c) no-z": [HttpClient(proxy_http, "upgraded-no-z", c, pid) for c in convos],
        }
        runs = uvloop.run(measure(clients, args.conversations, counters))
        events = upstream_socket_events(proxy_port)
    finally:
        for proc in (proxy, sim):
            proc.terminate()
            proc.wait(10)
        relay.terminate()
        relay.join(10)
        tmp.cleanup()
    report(runs, args, counters[CONNECTIONS])
    print("Laneway's upstream sockets (warm-up included): "
          + ", ".join(f"{kind} {count:g}" for kind, count in sorted(events.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
