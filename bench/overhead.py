"""What the proxy adds: latency, throughput and CPU, against going direct to the same upstream.

One run starts a zero-delay simulated provider and `laneway serve` (one worker) in front of
it, then measures, alternating direct and proxied blocks so drift hits both alike:
  - latency at concurrency 1 (p50/p99, and the difference)
  - requests/s at concurrency 32
  - the proxy process's CPU time per non-streaming request (from /proc), at concurrency 1 and 8
  - streaming: proxy CPU per 256-token stream and added time-to-first-token
  - paced streaming: proxy CPU per 256-token stream from a second simulator that paces tokens
    as the fast lane does (1000 tok/s, 50 ms to the first token), at concurrency 1 and 16

    .venv/bin/python bench/overhead.py [--requests 3000] [--log-level warning]
        [--upstream-headers openai|none] [--paced-streams 32] [--proxy-root DIR]

The simulators answer with OpenAI's full header set (``x-request-id``, ``openai-processing-ms``
and the six ``x-ratelimit-*``), which the proxy reads on every response, unless
``--upstream-headers none`` (a self-hosted server sending none of them).
``--proxy-root`` runs ``laneway serve`` from another checkout (say an older commit's worktree)
behind this checkout's simulator and load generator, for before/after figures.

The body-size profile (instead of the default one) measures proxy CPU and latency per
non-streaming request at concurrency 1 for request bodies of the given sizes, shaped like a
coding agent's resent history (many messages: tool calls and long code results) and as one
long string; with --against it runs a second proxy from another checkout beside this one and
alternates blocks between the two, so a before/after comparison shares the machine's drift:

    .venv/bin/python bench/overhead.py --body-kb 1,30,300 [--rounds 3] [--against /tmp/base]

The proxy runs at `--log-level info` (the default: one access-log line per request, written
to a file as a deployment would) unless told otherwise; `--log-level warning` measures
without the access log.

The load generator uses the proxy's own keep-alive client so its cost is small and equal
on both paths; load generator, proxy and simulator share this machine's cores.
"""
from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.upstream.http_pool import Origin, OriginPool  # noqa: E402

CHAT = b'{"model":"%s","messages":[{"role":"user","content":"Say something short about routing."}],"max_tokens":%d%s}'
TICKS = os.sysconf("SC_CLK_TCK")
UNLIMITED = ("--rpm", "1000000000", "--tpm", "1000000000000")
PACED = ("--ttft-ms", "50", "--tokens-per-s", "1000", "--batch-ms", "0")  # the fast lane's pace, a write per token


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process exited early: {proc.args}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


class Target:
    def __init__(self, name: str, base_url: str, model: str) -> None:
        self.name = name
        origin = Origin.parse(base_url)
        self.pool = OriginPool(origin, max_idle=64)
        self.head = b"POST %s/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nAuthorization: Bearer bench\r\n" % (
            origin.base_path.encode(), origin.host_header)
        self.model = model.encode()

    async def post(self, body: bytes) -> float:
        """Seconds to the whole response to one non-streaming chat request ``body``."""
        head = self.head + b"Content-Length: %d\r\n\r\n" % len(body)
        started = time.perf_counter()
        response = await self.pool.request(head, body, connect_s=5, first_byte_s=30, idle_s=30)
        await response.read()
        if response.status != 200:
            raise SystemExit(f"{self.name}: HTTP {response.status}")
        return time.perf_counter() - started

    async def call(self, max_tokens: int = 16, stream: bool = False) -> tuple[float, float]:
        """(seconds to the whole response, seconds to the first token)."""
        body = CHAT % (self.model, max_tokens, b',"stream":true' if stream else b"")
        head = self.head + b"Content-Length: %d\r\n\r\n" % len(body)
        started = time.perf_counter()
        response = await self.pool.request(head, body, connect_s=5, first_byte_s=30, idle_s=30)
        first = 0.0
        async for chunk in response.iter_body():
            if not first and b"tok1" in chunk:
                first = time.perf_counter() - started
        if response.status != 200:
            raise SystemExit(f"{self.name}: HTTP {response.status}")
        return time.perf_counter() - started, first


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def sequential(target: Target, n: int, **kw) -> list[tuple[float, float]]:
    return [await target.call(**kw) for _ in range(n)]


async def concurrent(target: Target, n: int, workers: int, **kw) -> float:
    """Requests per second with ``workers`` callers sharing ``n`` requests."""
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await target.call(**kw)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return n / (time.perf_counter() - started)


async def measure(direct: Target, proxied: Target, proxy_pid: int, n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for target in (direct, proxied):  # warm both paths: connections, caches, JIT-free but lazy imports
        await sequential(target, 200)
        await concurrent(target, 500, 32)

    lat = {direct.name: [], proxied.name: []}
    for _ in range(10):  # interleaved blocks
        for target in (direct, proxied):
            lat[target.name] += [total for total, _ in await sequential(target, n // 10)]
    for name, values in lat.items():
        out[f"{name}_p50_ms"] = statistics.median(values) * 1e3
        out[f"{name}_p99_ms"] = pct(values, 0.99) * 1e3
    out["added_p50_ms"] = out["proxy_p50_ms"] - out["direct_p50_ms"]
    out["added_p99_ms"] = out["proxy_p99_ms"] - out["direct_p99_ms"]

    for target in (direct, proxied):
        out[f"{target.name}_rps_c32"] = await concurrent(target, n, 32)

    before = cpu_seconds(proxy_pid)
    await sequential(proxied, n)
    out["proxy_cpu_ms_per_request_c1"] = (cpu_seconds(proxy_pid) - before) / n * 1e3
    before = cpu_seconds(proxy_pid)
    await concurrent(proxied, n, 8)
    out["proxy_cpu_ms_per_request"] = (cpu_seconds(proxy_pid) - before) / n * 1e3

    streams = max(50, n // 20)
    ttft = {direct.name: [], proxied.name: []}
    for target in (direct, proxied):
        ttft[target.name] += [first for _, first in await sequential(target, 20, max_tokens=256, stream=True)]
    for _ in range(5):
        for target in (direct, proxied):
            ttft[target.name] += [first for _, first in await sequential(target, streams // 5, max_tokens=256, stream=True)]
    out["direct_ttft_p50_ms"] = statistics.median(ttft[direct.name]) * 1e3
    out["proxy_ttft_p50_ms"] = statistics.median(ttft[proxied.name]) * 1e3
    out["added_ttft_p50_ms"] = out["proxy_ttft_p50_ms"] - out["direct_ttft_p50_ms"]
    before = cpu_seconds(proxy_pid)
    await sequential(proxied, streams, max_tokens=256, stream=True)
    out["proxy_cpu_ms_per_stream256"] = (cpu_seconds(proxy_pid) - before) / streams * 1e3
    return out


# --- the body-size profile (--body-kb) -----------------------------------------------------

_CODE = '''def retry(self, request: Request) -> Response:
    """Send "request" to the first healthy backend; retry once on a 5xx."""
    for backend in self.backends:
        if not backend.healthy:
            continue
        resp = backend.send(request, timeout=self.timeout_s)  # may raise
        if resp.status < 500:
            return resp
        log.warning("backend %s said %d: %r", backend.name, resp.status, resp.body[:80])
    raise NoBackend(f"none of {len(self.backends)} backends answered\t(see logs) — ✓")
'''


def chat_body(kb: int, model: str, shape: str) -> bytes:
    """A chat request of about ``kb`` KiB, keys ordered and spaced as the openai SDK sends them
    (``model`` after ``messages``): "history" is a coding agent resending its conversation — user
    turns, tool calls, long code results with quotes, newlines and some non-ASCII; "string" one
    long message."""
    target = kb * 1024 - 200
    messages: list[dict] = [{"role": "system", "content": "You are a coding agent; use the tools."}]
    if shape == "string":
        messages.append({"role": "user", "content": (_CODE * (target // len(_CODE) + 1))[:max(16, target)]})
    else:
        rnd = random.Random(kb)  # the same history every run
        while len(json.dumps(messages, ensure_ascii=False)) < target:
            i = len(messages)
            messages.append({"role": "user", "content": f"Step {i}: fix the retry logic in proxy/file_{i}.py"})
            messages.append({"role": "assistant", "content": None, "tool_calls": [{
                "id": f"call_{i}", "type": "function",
                "function": {"name": "read_file", "arguments": json.dumps({"path": f"proxy/file_{i}.py"})}}]})
            room = target - len(json.dumps(messages, ensure_ascii=False))
            messages.append({"role": "tool", "tool_call_id": f"call_{i}", "content": (_CODE * rnd.randint(1, 6))[:max(16, room)]})
    # compact, as the openai SDKs (httpx, JSON.stringify) and Codex (serde_json) encode
    return json.dumps({"messages": messages, "model": model, "max_tokens": 16}, ensure_ascii=False,
                      separators=(",", ":")).encode()


def task_cpu_ns(pid: int) -> int:
    """CPU time of all of ``pid``'s threads in nanoseconds (/proc schedstat: finer than clock ticks)."""
    return sum(int(Path(path).read_text().split()[0]) for path in glob.glob(f"/proc/{pid}/task/*/schedstat"))


async def measure_bodies(proxies: list[tuple[Target, int]], sizes: list[int], shapes: list[str], rounds: int,
                         block: int) -> dict[str, dict[str, list[float]]]:
    """Per (shape, size, proxy): CPU ms per request of each block of ``block`` sequential requests
    and each request's latency; the proxies alternate block by block, ten blocks a round."""
    out: dict[str, dict[str, list[float]]] = {}
    for shape in shapes:
        for kb in sizes:
            bodies = {target.name: chat_body(kb, target.model.decode(), shape) for target, _ in proxies}
            for target, _ in proxies:  # warm up: connections, lazy imports, buffers of this size
                for _ in range(block):
                    await target.post(bodies[target.name])
            for _ in range(rounds * 10):
                for target, pid in proxies:
                    series = out.setdefault(f"{shape} {kb} KiB {target.name}", {"cpu_ms": [], "latency_ms": []})
                    before = task_cpu_ns(pid)
                    for _ in range(block):
                        series["latency_ms"].append(await target.post(bodies[target.name]) * 1e3)
                    series["cpu_ms"].append((task_cpu_ns(pid) - before) / block / 1e6)
    return out


def _path(root: Path) -> str:
    """PYTHONPATH for a process running ``root``'s code (the caller's own PYTHONPATH after it)."""
    return os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))


def report_bodies(results: dict[str, dict[str, list[float]]]) -> None:
    print(f"{'body, proxy':32s} {'CPU ms/req p50':>14s} {'p99':>7s} {'latency ms p50':>15s} {'p99':>7s}")
    for key, series in results.items():
        cpu, latency = series["cpu_ms"], series["latency_ms"]
        print(f"{key:32s} {statistics.median(cpu):14.3f} {pct(cpu, 0.99):7.3f} "
              f"{statistics.median(latency):15.3f} {pct(latency, 0.99):7.3f}")


async def measure_paced(paced: Target, proxy_pid: int, streams: int) -> dict[str, float]:
    """Proxy CPU per 256-token stream when tokens arrive at the fast lane's pace, one read each."""
    out: dict[str, float] = {}
    await concurrent(paced, 16, 16, max_tokens=256, stream=True)  # warm: connections
    for workers in (1, 16):
        before = cpu_seconds(proxy_pid)
        await concurrent(paced, streams, workers, max_tokens=256, stream=True)
        out[f"proxy_cpu_ms_per_paced_stream_c{workers}"] = (cpu_seconds(proxy_pid) - before) / streams * 1e3
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--log-level", default="info", help="the proxy's; info writes the access log (default info)")
    parser.add_argument("--body-kb", help="comma-separated request body sizes in KiB: run the body-size profile")
    parser.add_argument("--body-shape", default="history,string", help="history, string or both (default both)")
    parser.add_argument("--rounds", type=int, default=3, help="body-size profile: rounds of ten blocks per proxy")
    parser.add_argument("--block", type=int, default=20, help="body-size profile: requests per block")
    parser.add_argument("--against", type=Path, help="body-size profile: also run the proxy of this checkout, alternating")
    parser.add_argument("--upstream-headers", choices=("openai", "none"), default="openai",
                        help="what the simulators send besides the body (default openai: OpenAI's full set)")
    parser.add_argument("--paced-streams", type=int, default=32, help="streams per paced measurement (0: skip)")
    parser.add_argument("--proxy-root", type=Path, default=ROOT, help="the checkout whose proxy runs (default this one)")
    parser.add_argument("--stream-batch-ms", type=float, default=0.0,
                        help="the proxy's server.stream_batch_ms (default 0: every chunk relayed as it comes)")
    args = parser.parse_args()

    sim_port, paced_port, proxy_port = free_port(), free_port(), free_port()
    policy = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    policy.write(
        "version: 1\nauth: open\n"
        f"deployments:\n  - {{name: sim, provider: openai, model: sim-instant, base_url: 'http://127.0.0.1:{sim_port}/v1'}}\n"
        f"  - {{name: sim-paced, provider: openai, model: sim-instant, base_url: 'http://127.0.0.1:{paced_port}/v1'}}\n"
        "routes:\n  - {name: bench, candidates: [sim]}\n  - {name: paced, candidates: [sim-paced]}\n"
        + (f"server: {{stream_batch_ms: {args.stream_batch_ms:g}}}\n" if args.stream_batch_ms else "")
    )
    policy.close()
    env = dict(os.environ, PYTHONPATH=_path(ROOT))
    # the provider's rate-limit headers on every answer, as real ones send, with windows no benchmark exhausts
    sim_args = [sys.executable, "-m", "proxy.simulate", "--profile", "instant", *UNLIMITED,
                *(("--no-provider-headers",) if args.upstream_headers == "none" else ())]
    sims = [subprocess.Popen([*sim_args, "--port", str(port), *extra], env=env, stdout=subprocess.DEVNULL)
            for port, extra in ((sim_port, ()), (paced_port, PACED))]
    log = tempfile.TemporaryFile("w")
    roots = [args.proxy_root.resolve()] + ([args.against.resolve()] if args.against is not None else [])
    ports = [proxy_port] + [free_port() for _ in roots[1:]]
    proxies = [subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--policy", policy.name, "--port", str(port),
                                 "--log-level", args.log_level], env=dict(env, PYTHONPATH=_path(root)), stderr=log, cwd=root)
               for root, port in zip(roots, ports)]
    try:
        for port, proc in ((sim_port, sims[0]), (paced_port, sims[1]), *zip(ports, proxies)):
            wait_listening(port, proc)
        if args.body_kb:
            sizes = [int(kb) for kb in args.body_kb.split(",")]
            shapes = args.body_shape.split(",")
            names = ["proxy"] if args.against is None else ["proxy", f"against {args.against.name}"]
            targets = [(Target(name, f"http://127.0.0.1:{port}/v1", "bench"), proc.pid)
                       for name, port, proc in zip(names, ports, proxies)]
            report_bodies(uvloop.run(measure_bodies(targets, sizes, shapes, args.rounds, args.block)))
            return 0
        direct = Target("direct", f"http://127.0.0.1:{sim_port}/v1", "sim-instant")
        proxied = Target("proxy", f"http://127.0.0.1:{proxy_port}/v1", "bench")
        results = uvloop.run(measure(direct, proxied, proxies[0].pid, args.requests))
        if args.paced_streams:
            paced = Target("paced", f"http://127.0.0.1:{proxy_port}/v1", "paced")
            results.update(uvloop.run(measure_paced(paced, proxies[0].pid, args.paced_streams)))
    finally:
        for proc in (*proxies, *sims):
            proc.terminate()
            proc.wait(10)
        os.unlink(policy.name)
        log.close()

    for key, value in results.items():
        print(f"{key:32s} {value:10.3f}")
    print(
        f"summary: added p50 {results['added_p50_ms']:.3f} ms, p99 {results['added_p99_ms']:.3f} ms (c=1); "
        f"{results['proxy_rps_c32']:.0f} req/s via proxy vs {results['direct_rps_c32']:.0f} direct (c=32); "
        f"proxy CPU {results['proxy_cpu_ms_per_request_c1']:.3f} ms/request (c=1), {results['proxy_cpu_ms_per_request']:.3f} (c=8), "
        f"{results['proxy_cpu_ms_per_stream256']:.2f} ms/256-token stream; "
        f"added TTFT p50 {results['added_ttft_p50_ms']:.3f} ms"
    )
    if args.paced_streams:
        print(f"paced (1000 tok/s, 50 ms TTFT): proxy CPU {results['proxy_cpu_ms_per_paced_stream_c1']:.2f} ms/256-token stream (c=1), "
              f"{results['proxy_cpu_ms_per_paced_stream_c16']:.2f} (c=16)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
