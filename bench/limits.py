"""What rate limiting adds: admission latency, proxy CPU and Redis round trips per request.

One run starts a throwaway `redis-server`, a zero-delay simulated provider speaking OpenAI's
header dialect (x-request-id, openai-processing-ms and the six x-ratelimit-* headers on every
answer, with windows too big to run out) and `laneway serve` processes in front of it: the
same policy without limits, with client and deployment limits (RPM, TPM, concurrency; set
high so nothing is refused) kept in Redis, and the limited policy again under each `--compare`
tree (another checkout's `proxy/`, e.g. the base commit, for before/after in one run). It
alternates blocks of sequential requests between them so drift hits all alike, reading each
proxy's CPU time from /proc, then, one proxy at a time, counts what Redis saw per request
(INFO deltas on the server it started): round trips (socket reads Redis processed; a pipeline
arrives in one read), EVALSHA calls (every command the proxy sends) and Redis CPU time,
sequentially and with 16 requests in flight.

    .venv/bin/python bench/limits.py [--requests 3000] [--compare /tmp/base-tree ...]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from overhead import (
    UNLIMITED,
    Target,
    concurrent,
    cpu_seconds,
    free_port,
    pct,
    sequential,
    wait_listening,
)

POLICY = """\
version: 1
auth: keys
{store}
keys:
  - name: bench
    sha256: {sha}
    {key_limits}
deployments:
  - name: sim
    provider: openai
    model: sim-instant
    base_url: http://127.0.0.1:{sim_port}/v1
    {dep_limits}
routes:
  - {{name: bench, candidates: [sim]}}
"""
LIMITS = "limits: {rpm: 100000000, tpm: 1000000000000, concurrency: 10000}"
OPENAI_HEADERS = (b"x-request-id", b"openai-processing-ms", *(b"x-ratelimit-%s-%s" % (what, kind)
                  for what in (b"limit", b"remaining", b"reset") for kind in (b"requests", b"tokens")))
IN_FLIGHT = 16


def write_policy(directory: str, name: str, limited: bool, redis_url: str, sim_port: int) -> str:
    path = os.path.join(directory, name)
    Path(path).write_text(POLICY.format(
        store=f"store: {{redis_url: '{redis_url}', timeout_ms: 200}}" if limited else "",
        sha=hashlib.sha256(b"bench").hexdigest(), sim_port=sim_port,
        key_limits=LIMITS if limited else "", dep_limits=LIMITS if limited else "",
    ))
    return path


def check_headers(sim_port: int) -> None:
    """The simulator must answer as OpenAI does, or the learning this bench counts never happens."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", sim_port, timeout=5)
    conn.request("POST", "/v1/chat/completions", b'{"model":"sim-instant","messages":[{"role":"user","content":"hi"}]}',
                 {"content-type": "application/json"})
    response = conn.getresponse()
    names = {name.lower().encode() for name, _ in response.getheaders()}
    response.read()
    conn.close()
    missing = [h.decode() for h in OPENAI_HEADERS if h not in names]
    if missing:
        raise SystemExit(f"the simulator did not send {', '.join(missing)}")


def redis_info(port: int) -> dict[str, float]:
    """Redis CPU seconds, socket reads processed, commands run (scripts' included), EVALSHA calls
    and their usec, from one INFO call."""
    info = subprocess.run([shutil.which("redis-cli"), "-p", str(port), "info", "everything"],
                          capture_output=True, text=True, check=True).stdout
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    stat = dict(pair.split("=") for pair in fields.get("cmdstat_evalsha", "calls=0,usec=0").split(",")[:2])
    return {"cpu_s": float(fields["used_cpu_sys"]) + float(fields["used_cpu_user"]),
            "reads": int(fields["total_reads_processed"]), "commands": int(fields["total_commands_processed"]),
            "evalsha": int(stat["calls"]), "evalsha_usec": int(stat["usec"])}


async def alternate(targets: list[Target], pids: list[int], n: int, blocks: int = 10) -> tuple[list[list[float]], list[float]]:
    """Latencies per target and its proxy's CPU seconds per request, over interleaved blocks."""
    for target in targets:  # warm every one (connections, scripts loaded)
        await sequential(target, 200)
    times: list[list[float]] = [[] for _ in targets]
    cpu = [0.0] * len(targets)
    for _ in range(blocks):
        for i, (target, pid) in enumerate(zip(targets, pids)):
            before = cpu_seconds(pid)
            times[i] += [t for t, _ in await sequential(target, n // blocks)]
            cpu[i] += cpu_seconds(pid) - before
    return times, [c / len(t) for c, t in zip(cpu, times)]


def per_request(redis_port: int, target: Target, n: int, in_flight: int) -> tuple[float, float, float]:
    """What Redis processed per request over ``n`` requests, ``in_flight`` at a time: (round trips,
    EVALSHA calls, Redis CPU us), less the INFO call that reads the counters."""
    before = redis_info(redis_port)
    if in_flight == 1:
        uvloop.run(sequential(target, n))
    else:
        uvloop.run(concurrent(target, n, in_flight))
    time.sleep(0.3)  # the last queued writes go out after a short delay
    after = redis_info(redis_port)
    return ((after["reads"] - before["reads"] - 1) / n, (after["evalsha"] - before["evalsha"]) / n,
            (after["cpu_s"] - before["cpu_s"]) * 1e6 / n)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--compare", action="append", default=[], metavar="TREE",
                        help="also run the limited policy under this checkout's proxy/ (repeatable)")
    args = parser.parse_args()
    trees = [("limited", ROOT)] + [(f"limited@{Path(tree).name}", Path(tree).resolve()) for tree in args.compare]
    redis_port, sim_port, plain_port = free_port(), free_port(), free_port()
    ports = [free_port() for _ in trees]
    directory = tempfile.mkdtemp(prefix="laneway-bench-limits-")
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    procs = [subprocess.Popen([shutil.which("redis-server"), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", directory], stdout=subprocess.DEVNULL)]
    rows: dict[str, dict[str, float]] = {}
    try:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        procs.append(subprocess.Popen([sys.executable, "-m", "proxy.simulate", "--profile", "instant", "--dialect", "openai",
                                       "--port", str(sim_port), *UNLIMITED], env=env, stdout=subprocess.DEVNULL))
        serving = [("plain", ROOT, plain_port, False)] + [(name, tree, port, True) for (name, tree), port in zip(trees, ports)]
        for name, tree, port, limited in serving:
            policy = write_policy(directory, f"{name}.yaml", limited, redis_url, sim_port)
            procs.append(subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--policy", policy, "--port", str(port),
                                           "--log-level", "warning"], env=dict(os.environ, PYTHONPATH=str(tree)), cwd=tree))
        for port, proc in zip((redis_port, sim_port, plain_port, *ports), procs):
            wait_listening(port, proc)
        check_headers(sim_port)
        targets = [Target(name, f"http://127.0.0.1:{port}/v1", "bench") for name, _, port, _ in serving]
        times, cpu = uvloop.run(alternate(targets, [p.pid for p in procs[2:]], args.requests))
        sample = min(1000, args.requests)
        for target, latencies, cpu_per in zip(targets, times, cpu):
            row = rows[target.name] = {"p50_ms": pct(latencies, 0.5) * 1000, "p99_ms": pct(latencies, 0.99) * 1000,
                                       "cpu_ms_per_req": cpu_per * 1000}
            if target.name != "plain":
                for in_flight in (1, IN_FLIGHT):
                    trips, evalsha, redis_us = per_request(redis_port, target, sample, in_flight)
                    row[f"round_trips@c{in_flight}"], row[f"evalsha@c{in_flight}"], row[f"redis_us@c{in_flight}"] = trips, evalsha, redis_us
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(directory, ignore_errors=True)

    plain = rows["plain"]
    columns = ["p50_ms", "p99_ms", "cpu_ms_per_req"] + [f"{what}@c{c}" for c in (1, IN_FLIGHT) for what in ("round_trips", "evalsha", "redis_us")]
    print(f"{'':24s}" + "".join(f"{c:>16s}" for c in columns))
    for name, row in rows.items():
        print(f"{name:24s}" + "".join(f"{row[c]:16.3f}" if c in row else f"{'':16s}" for c in columns))
    print(f"(c=1: {args.requests} requests per proxy in 10 interleaved blocks; Redis counts over {sample} requests each)")
    for name, row in rows.items():
        if name == "plain":
            continue
        print(f"summary {name}: limits add p50 {row['p50_ms'] - plain['p50_ms']:.3f} ms, p99 {row['p99_ms'] - plain['p99_ms']:.3f} ms, "
              f"CPU {row['cpu_ms_per_req'] - plain['cpu_ms_per_req']:.3f} ms/request; Redis round trips per request "
              f"{row['round_trips@c1']:.2f} sequential, {row[f'round_trips@c{IN_FLIGHT}']:.2f} with {IN_FLIGHT} in flight "
              f"({row['evalsha@c1']:.2f} / {row[f'evalsha@c{IN_FLIGHT}']:.2f} EVALSHA, {row['redis_us@c1']:.0f} / "
              f"{row[f'redis_us@c{IN_FLIGHT}']:.0f} us of Redis CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
