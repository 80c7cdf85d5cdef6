"""Routing strategies under a bursty coding workload: who gets 429s, who waits, who pays.

One seeded, bounded replay is sent, at the same moments, to four proxies that differ only in
the `codex` route's strategy. Each proxy has its own pair of simulated providers:
  - a wafer lane (60 ms TTFT, 1500 tok/s) with tight preview limits: 30 RPM / 60k TPM,
    advertised in OpenAI-style x-ratelimit-* headers; a fast-lane price premium
  - a GPU lane (400 ms TTFT, 80 tok/s) with no limits and a lower price

The workload mixes short interactive turns arriving in bursts (a developer iterating) with
long agentic turns (big context, long answers). Strategies compared:
  latency       predicted completion time, spill before 429, scarce fast-lane quota kept
                for the requests that gain most from it (spill.reserve_*)
  cost          cheapest candidate predicted to meet a 3 s SLO at p95
  round-robin   `weighted` 1:1 (falls back on 429 / 5xx like every strategy)
  429-fallback  fast lane first, next lane only after the fast lane answered 429

    .venv/bin/python bench/scenario.py [--seed 7] [--duration 60]

Prints one table (client-visible 429s and other errors, spills, fallbacks, share served by
the fast lane, p50/p95 completion time, spend at the policy's `prices:`) and a summary line.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
PRICES = {"wafer": (1.0, 4.0), "gpu": (0.5, 2.0)}  # USD per million input / output tokens

POLICY = """\
version: 1
auth: open
deployments:
  - name: wafer
    provider: openai
    model: sim-wafer
    base_url: http://127.0.0.1:{wafer_port}/v1
    hardware: wafer
    priors: {{ttft_ms: 60, tokens_per_s: 1500}}
  - name: gpu
    provider: openai
    model: sim-gpu
    base_url: http://127.0.0.1:{gpu_port}/v1
    hardware: gpu
    priors: {{ttft_ms: 400, tokens_per_s: 80}}
prices:
  sim-wafer:
    - {{effective_from: 2026-01-01, input_per_mtok: {wafer_in}, output_per_mtok: {wafer_out}, status: announced}}
  sim-gpu:
    - {{effective_from: 2026-01-01, input_per_mtok: {gpu_in}, output_per_mtok: {gpu_out}, status: announced}}
routes:
  - name: codex
    candidates: [wafer, gpu]
{route}"""

STRATEGIES = {
    "latency": "    strategy: latency\n    spill: {reserve_fraction: 0.4, reserve_min_gain_ms: 4000}\n",
    "cost": "    strategy: cost\n    slo: {total_ms: 3000, percentile: 95}\n",
    "round-robin": "    strategy: weighted\n    weights: {wafer: 1, gpu: 1}\n",
    "429-fallback": "    strategy: fallback\n    spill: {min_requests: 0}\n",
}
WORDS = "def class return import self async await yield lambda value index buffer token route lane".split()


@dataclass(frozen=True)
class Turn:
    at: float          # seconds after the start
    kind: str          # "short" | "long"
    prompt_tokens: int
    output_tokens: int


@dataclass
class Result:
    status: int
    seconds: float
    deployment: str = ""
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class Lane:
    name: str
    port: int
    procs: list[subprocess.Popen] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    counters: dict = field(default_factory=dict)


def workload(seed: int, duration: float) -> list[Turn]:
    """Bursts of short turns (every ~8 s, 3-8 turns 0.3-1 s apart) and a long turn every 6-12 s."""
    rng = random.Random(seed)
    turns: list[Turn] = []
    t = rng.expovariate(1 / 4)
    while t < duration:
        at = t
        for _ in range(rng.randint(3, 8)):
            turns.append(Turn(at, "short", rng.randint(400, 1500), rng.randint(60, 200)))
            at += rng.uniform(0.3, 1.0)
        t += rng.expovariate(1 / 8)
    t = rng.uniform(0, 5)
    while t < duration:
        turns.append(Turn(t, "long", rng.randint(3000, 5000), rng.randint(700, 1200)))
        t += rng.uniform(6, 12)
    return sorted((turn for turn in turns if turn.at < duration), key=lambda turn: turn.at)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)


def wait_ready(url: str, procs: list[subprocess.Popen], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise SystemExit(f"a process for {url} exited early")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def launch(name: str, workdir: Path) -> Lane:
    wafer_port, gpu_port, port = free_port(), free_port(), free_port()
    sim = [sys.executable, "-m", "proxy.simulate", "--host", "127.0.0.1"]
    policy = workdir / f"{name}.yaml"
    policy.write_text(POLICY.format(
        wafer_port=wafer_port, gpu_port=gpu_port, route=STRATEGIES[name],
        wafer_in=PRICES["wafer"][0], wafer_out=PRICES["wafer"][1], gpu_in=PRICES["gpu"][0], gpu_out=PRICES["gpu"][1],
    ))
    lane = Lane(name, port)
    lane.procs = [
        start(sim + ["--profile", "wafer", "--port", str(wafer_port), "--rpm", "30", "--tpm", "60000", "--dialect", "openai"]),
        start(sim + ["--profile", "gpu", "--port", str(gpu_port)]),
        start([sys.executable, "-m", "proxy.cli", "serve", "--policy", str(policy), "--port", str(port),
               "--no-simulators", "--log-level", "warning"]),
    ]
    for url in (f"http://127.0.0.1:{wafer_port}/v1/models", f"http://127.0.0.1:{gpu_port}/v1/models",
                f"http://127.0.0.1:{port}/healthz"):
        wait_ready(url, lane.procs)
    return lane


def body(turn: Turn, rng: random.Random) -> bytes:
    prompt = " ".join(rng.choice(WORDS) for _ in range(turn.prompt_tokens * 4 // 6))
    return orjson.dumps({
        "model": "codex", "stream": True, "stream_options": {"include_usage": True},
        "max_tokens": turn.output_tokens, "messages": [{"role": "user", "content": prompt}],
    })


async def send(client: httpx.AsyncClient, lane: Lane, payload: bytes) -> None:
    started = time.perf_counter()
    async with client.stream("POST", f"http://127.0.0.1:{lane.port}/v1/chat/completions", content=payload,
                             headers={"content-type": "application/json"}) as response:
        tail = b""
        async for chunk in response.aiter_bytes():
            tail = (tail + chunk)[-4096:]
        result = Result(response.status_code, time.perf_counter() - started,
                        response.headers.get("x-laneway-deployment", ""))
    usage_at = tail.rfind(b'"usage":{')
    if response.status_code == 200 and usage_at >= 0:
        usage = orjson.loads(tail[usage_at + 8: tail.index(b"}", usage_at) + 1])
        result.input_tokens, result.output_tokens = usage["prompt_tokens"], usage["completion_tokens"]
    lane.results.append(result)


async def replay(lanes: list[Lane], turns: list[Turn], seed: int) -> None:
    rng = random.Random(seed + 1)
    payloads = [body(turn, rng) for turn in turns]
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        began = time.perf_counter()
        tasks = []
        for turn, payload in zip(turns, payloads):
            delay = turn.at - (time.perf_counter() - began)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks += [asyncio.ensure_future(send(client, lane, payload)) for lane in lanes]
        await asyncio.gather(*tasks)
        for lane in lanes:
            lane.counters = (await client.get(f"http://127.0.0.1:{lane.port}/admin/policy")).json()["routing"]["counters"]


def spend(results: list[Result]) -> float:
    return sum(r.input_tokens * PRICES[r.deployment][0] + r.output_tokens * PRICES[r.deployment][1]
               for r in results if r.deployment in PRICES) / 1e6


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def report(lanes: list[Lane], turns: list[Turn], seed: int, duration: float) -> None:
    shorts = sum(t.kind == "short" for t in turns)
    print(f"workload: seed {seed}, {duration:g} s, {len(turns)} turns ({shorts} short interactive, "
          f"{len(turns) - shorts} long agentic); wafer lane 30 RPM / 60k TPM, GPU lane unlimited\n")
    print("| strategy | client 429s | other errors | spills | fallbacks | on wafer | p50 s | p95 s | spend USD |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = {}
    for lane in lanes:
        ok = [r for r in lane.results if r.status == 200]
        times = [r.seconds for r in ok]
        rows[lane.name] = row = {
            "429": sum(r.status == 429 for r in lane.results),
            "errors": sum(r.status not in (200, 429) for r in lane.results),
            "p50": pct(times, 0.50), "p95": pct(times, 0.95),
        }
        wafer = sum(r.deployment == "wafer" for r in ok) / max(1, len(ok))
        print(f"| {lane.name} | {row['429']} | {row['errors']} | {lane.counters.get('spills', 0)} | "
              f"{lane.counters.get('fallbacks', 0)} | {wafer:.0%} | {row['p50']:.2f} | {row['p95']:.2f} | "
              f"{spend(ok):.4f} |")
    best, base = rows["latency"], rows["429-fallback"]
    gain = 1 - best["p95"] / base["p95"]
    verdict = "meets" if best["429"] == 0 and gain >= 0.30 else "MISSES"
    print(f"\nsummary: latency strategy {verdict} the targets: {best['429']} client-visible 429s, "
          f"p95 {best['p95']:.2f} s vs {base['p95']:.2f} s for fall-back-after-429 ({gain:.0%} lower)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals (the replay ends ~15 s later)")
    args = parser.parse_args()
    turns = workload(args.seed, args.duration)
    lanes: list[Lane] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for name in STRATEGIES:
                lanes.append(launch(name, Path(tmp)))
            asyncio.run(replay(lanes, turns, args.seed))
        finally:
            for lane in lanes:
                for proc in lane.procs:
                    proc.terminate()
                for proc in lane.procs:
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    report(lanes, turns, args.seed, args.duration)


if __name__ == "__main__":
    main()
