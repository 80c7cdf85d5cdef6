"""The limiter past Redis's capacity: do admissions stay shared (and exact) under a burst?

Starts a throwaway `redis-server` and ``--processes`` worker processes; each runs one Limiter
(the policy's `store` section as a replica would) and ``--concurrency`` tasks that admit and
settle in a loop for ``--seconds``. It prints the admissions, how many of them the fail-open
fallback granted locally, the ADMIT scripts Redis ran, and, with ``--rpm``, whether the shared
limit held (admitted <= rpm).

    .venv/bin/python bench/limits_burst.py [--processes 2] [--concurrency 256] [--seconds 5] [--rpm N]
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
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

from overhead import free_port  # noqa: E402

from proxy.config.loader import parse_policy  # noqa: E402
from proxy.errors import ClientLimited, StoreUnavailable  # noqa: E402
from proxy.limits.limiter import DeploymentLimited, Limiter  # noqa: E402

POLICY = """\
version: 1
auth: keys
store: {{redis_url: '{redis_url}', timeout_ms: {timeout_ms}, on_store_error: fail_open, replicas: {replicas}}}
keys:
  - {{name: bench, sha256: {sha}, limits: {{rpm: {rpm}, concurrency: 100000}}}}
deployments:
  - {{name: sim, provider: openai, model: sim-instant, base_url: 'http://127.0.0.1:9/v1', limits: {{rpm: 100000000, tpm: 1000000000000}}}}
routes:
  - {{name: bench, candidates: [sim]}}
"""


async def worker_loop(policy_text: str, concurrency: int, seconds: float) -> dict:
    limiter = Limiter.from_policy(parse_policy(policy_text))
    counts = {"admitted": 0, "refused": 0, "unavailable": 0}
    deadline = time.monotonic() + seconds

    async def one() -> None:
        while time.monotonic() < deadline:
            ticket = limiter.borrow("bench", 100, 10)
            try:
                await ticket.admit("sim")
            except (ClientLimited, DeploymentLimited):
                counts["refused"] += 1
                await asyncio.sleep(0.01)
                continue
            except StoreUnavailable:
                counts["unavailable"] += 1
                await asyncio.sleep(0.01)
                continue
            counts["admitted"] += 1
            await asyncio.sleep(0)  # the request's upstream call: other tasks run meanwhile
            limiter.give_back(ticket, 110)

    await asyncio.gather(*(one() for _ in range(concurrency)))
    await limiter.aclose()
    return counts | {"local": limiter.stats.local_admissions, "store_errors": limiter.stats.store_errors}


def worker(policy_text: str, concurrency: int, seconds: float, out) -> None:
    out.put(uvloop.run(worker_loop(policy_text, concurrency, seconds)))


def admit_calls(port: int) -> int:
    """ADMIT scripts Redis ran (INFO commandstats counts EVALSHA calls; MONITOR would slow Redis)."""
    info = subprocess.run([shutil.which("redis-cli"), "-p", str(port), "info", "commandstats"],
                          capture_output=True, text=True, check=True).stdout
    line = next((line for line in info.splitlines() if line.startswith("cmdstat_evalsha:")), "")
    return int(line.split("calls=")[1].split(",")[0]) if line else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--timeout-ms", type=int, default=50)
    parser.add_argument("--rpm", type=int, default=100_000_000, help="the client's shared limit (exactness check)")
    args = parser.parse_args()
    port = free_port()
    directory = tempfile.mkdtemp(prefix="laneway-bench-burst-")
    redis = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", directory], stdout=subprocess.DEVNULL)
    try:
        while subprocess.run([shutil.which("redis-cli"), "-p", str(port), "ping"], capture_output=True).returncode:
            time.sleep(0.05)
        text = POLICY.format(redis_url=f"redis://127.0.0.1:{port}/0", timeout_ms=args.timeout_ms, replicas=args.processes,
                             sha=hashlib.sha256(b"bench").hexdigest(), rpm=args.rpm)
        out: multiprocessing.Queue = multiprocessing.Queue()
        procs = [multiprocessing.Process(target=worker, args=(text, args.concurrency, args.seconds, out)) for _ in range(args.processes)]
        for proc in procs:
            proc.start()
        results = [out.get(timeout=args.seconds + 60) for _ in procs]
        for proc in procs:
            proc.join(10)
        scripts_run = admit_calls(port)
    finally:
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(directory, ignore_errors=True)
    total = {k: sum(r[k] for r in results) for k in results[0]}
    total["evalsha_calls"] = scripts_run
    total["local_share"] = round(total["local"] / max(1, total["admitted"]), 4)
    if args.rpm < 100_000_000:
        total["within_rpm"] = total["admitted"] <= args.rpm
    print(json.dumps(total))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
