"""What rate limiting adds: admission latency and Redis round trips per request.

One run starts a throwaway `redis-server`, a zero-delay simulated provider and two
`laneway serve` processes in front of it: the same policy without limits, and with client and
deployment limits (RPM, TPM, concurrency; set high so nothing is refused) kept in Redis.
It alternates blocks of sequential requests between the two so drift hits both alike, then
counts Redis round trips per request (socket reads Redis processed) and, with MONITOR over a
separate sample, the EVALSHA calls: admission (on the request path) and settle (after the
response, sent in the same pipeline as the next admission).

    .venv/bin/python bench/limits.py [--requests 3000]
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

from overhead import Target, free_port, pct, sequential, wait_listening  # noqa: E402

from proxy.store import scripts  # noqa: E402

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


def write_policy(directory: str, name: str, limited: bool, redis_url: str, sim_port: int) -> str:
    path = os.path.join(directory, name)
    Path(path).write_text(POLICY.format(
        store=f"store: {{redis_url: '{redis_url}', timeout_ms: 200}}" if limited else "",
        sha=hashlib.sha256(b"bench").hexdigest(), sim_port=sim_port,
        key_limits="limits: {rpm: 100000000, tpm: 1000000000000, concurrency: 10000}" if limited else "",
        dep_limits="limits: {rpm: 100000000, tpm: 1000000000000, concurrency: 10000}" if limited else "",
    ))
    return path


async def alternate(plain: Target, limited: Target, n: int, blocks: int = 10) -> tuple[list[float], list[float]]:
    await sequential(plain, 200)  # warm both (connections, scripts loaded)
    await sequential(limited, 200)
    a: list[float] = []
    b: list[float] = []
    for _ in range(blocks):
        a += [t for t, _ in await sequential(plain, n // blocks)]
        b += [t for t, _ in await sequential(limited, n // blocks)]
    return a, b


def reads_processed(redis_port: int) -> int:
    """Redis's count of socket reads: one per round trip (a pipeline arrives in one read)."""
    info = subprocess.run([shutil.which("redis-cli"), "-p", str(redis_port), "info", "stats"], capture_output=True, text=True, check=True)
    return int(next(line for line in info.stdout.splitlines() if line.startswith("total_reads_processed:")).split(":")[1])


def count_round_trips(redis_port: int, limited: Target, n: int) -> tuple[float, float, float]:
    """Per request over ``n`` requests: admission EVALSHAs and all EVALSHAs (via MONITOR), and
    round trips (socket reads Redis processed, measured without MONITOR)."""
    before = reads_processed(redis_port)
    uvloop.run(sequential(limited, n))
    time.sleep(0.5)  # the last settles go out after a short delay
    round_trips = (reads_processed(redis_port) - before - 1) / n  # minus the INFO call itself
    admit_sha = hashlib.sha1(scripts.ADMIT.encode()).hexdigest().encode()
    with tempfile.TemporaryFile() as out:
        monitor = subprocess.Popen([shutil.which("redis-cli"), "-p", str(redis_port), "monitor"], stdout=out)
        time.sleep(0.3)
        uvloop.run(sequential(limited, n))
        time.sleep(0.5)  # settles run after the response
        monitor.terminate()
        monitor.wait(10)
        out.seek(0)
        lines = [line for line in out.read().splitlines() if b'"EVALSHA"' in line]
    admits = sum(admit_sha in line for line in lines)
    return admits / n, len(lines) / n, round_trips


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    redis_port, sim_port, plain_port, limited_port = free_port(), free_port(), free_port(), free_port()
    directory = tempfile.mkdtemp(prefix="laneway-bench-limits-")
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([shutil.which("redis-server"), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", directory], stdout=subprocess.DEVNULL)]
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "proxy.simulate", "--profile", "instant", "--port", str(sim_port),
                                       "--rpm", "1000000000", "--tpm", "1000000000000"],  # headers, never a 429
                                      env=env, stdout=subprocess.DEVNULL))
        for port, name, limited in ((plain_port, "plain.yaml", False), (limited_port, "limited.yaml", True)):
            policy = write_policy(directory, name, limited, redis_url, sim_port)
            procs.append(subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--policy", policy, "--port", str(port),
                                           "--log-level", "warning"], env=env))
        for port, proc in zip((redis_port, sim_port, plain_port, limited_port), procs):
            wait_listening(port, proc)
        plain = Target("plain", f"http://127.0.0.1:{plain_port}/v1", "bench")
        limited = Target("limited", f"http://127.0.0.1:{limited_port}/v1", "bench")
        a, b = uvloop.run(alternate(plain, limited, args.requests))
        admit_calls, all_calls, round_trips = count_round_trips(redis_port, limited, min(500, args.requests))
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(directory, ignore_errors=True)

    p50 = (pct(b, 0.5) - pct(a, 0.5)) * 1000
    p99 = (pct(b, 0.99) - pct(a, 0.99)) * 1000
    rows = {
        "plain_p50_ms": pct(a, 0.5) * 1000, "plain_p99_ms": pct(a, 0.99) * 1000,
        "limited_p50_ms": pct(b, 0.5) * 1000, "limited_p99_ms": pct(b, 0.99) * 1000,
        "added_p50_ms": p50, "added_p99_ms": p99,
        "admission_evalsha_per_request": admit_calls, "evalsha_per_request_total": all_calls,
        "redis_round_trips_per_request": round_trips,
    }
    for key, value in rows.items():
        print(f"{key:36s} {value:10.3f}")
    print(f"summary: limits add p50 {p50:.3f} ms, p99 {p99:.3f} ms (c=1, {len(b)} requests); "
          f"{admit_calls:.2f} admission call(s) on the request path; {round_trips:.2f} Redis round trips per request "
          f"in all ({all_calls:.2f} EVALSHA: settles ride along with the next admission)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
