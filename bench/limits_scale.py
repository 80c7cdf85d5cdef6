"""Admissions per Redis core: how many admit + settle cycles one Redis CPU second carries.

Starts a throwaway `redis-server` on a free port and ``--processes`` worker processes; each runs
the real limiter (``proxy.limits.limiter`` over ``RedisStore``, as a replica would) with
``--concurrency`` tasks that borrow a ticket, admit it for the deployment, and give it back
with its usage, in a loop for ``--seconds``. Two policies:

- ``realistic``: client and deployment rpm + tpm + concurrency, plus the provider bucket, and
  every answer's OpenAI rate-limit headers learnt (as a real provider sends them);
- ``minimal``: one rpm bucket on the client key;
- ``windows`` and ``slots``: the realistic policy without its concurrency limits, and with only
  them (the provider bucket and learning in both), so the cost of each kind of bucket shows.

Limits are set high so nothing is refused; Redis's CPU time (INFO cpu) and EVALSHA figures
(INFO commandstats) over the run give its cost per admission, and admissions per Redis CPU
second is the capacity of one Redis core (the load generators share the machine, so the
admissions/s they reach is a floor). Then the exactness check: the realistic policy with a
client rpm of ``--burst-rpm``, every worker admitting as fast as it can for a second; the
admissions across all processes must not exceed it.

    .venv/bin/python bench/limits_scale.py [--processes 2] [--concurrency 64] [--seconds 5]
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

from limits import redis_info
from overhead import free_port

from proxy.config.loader import parse_policy
from proxy.errors import ClientLimited
from proxy.limits.limiter import DeploymentLimited, Limiter

HIGH = "rpm: 100000000, tpm: 1000000000000, concurrency: 100000"
POLICY = """\
version: 1
auth: keys
store: {{redis_url: '{redis_url}', timeout_ms: 200, on_store_error: fail_closed{store}}}
keys:
  - {{name: {key}, sha256: {sha}, limits: {{{client}}}}}
deployments:
  - {{name: sim, provider: openai, model: sim-instant, base_url: 'http://127.0.0.1:9/v1'{deployment}}}
routes:
  - {{name: bench, candidates: [sim]}}
"""
WINDOWS = "rpm: 100000000, tpm: 1000000000000"
LEASES = ", leases: {requests: 256, duration_ms: 1000, share: 0.1}"
SCENARIOS = {  # name -> (client limits, deployment limits or "", learn the provider's headers, store settings)
    "realistic": (HIGH, f", limits: {{{HIGH}}}", True, ""),
    "leased": (HIGH, f", limits: {{{HIGH}}}", True, LEASES),   # the realistic policy with quota leases
    "minimal": ("rpm: 100000000", "", False, ""),
    # the realistic policy split in two, to price what each kind of bucket costs per request:
    "windows": (WINDOWS, f", limits: {{{WINDOWS}}}", True, ""),                         # rpm + tpm + provider
    "slots": ("concurrency: 100000", ", limits: {concurrency: 100000}", True, ""),   # concurrency + provider
}
# what OpenAI sends on every answer, windows too big to run out
HEADERS = [(b"x-ratelimit-limit-requests", b"30000"), (b"x-ratelimit-remaining-requests", b"29999"),
           (b"x-ratelimit-reset-requests", b"2ms"), (b"x-ratelimit-limit-tokens", b"150000000"),
           (b"x-ratelimit-remaining-tokens", b"149999000"), (b"x-ratelimit-reset-tokens", b"0s")]
INPUT_TOKENS, MAX_OUTPUT, USED = 100, 20, 110


def policy_text(redis_url: str, key: str, client: str, deployment: str, store: str = "") -> str:
    """Each run names its own key (its buckets start empty) and the same deployment."""
    return POLICY.format(redis_url=redis_url, key=key, sha=hashlib.sha256(key.encode()).hexdigest(), client=client,
                         deployment=deployment, store=store)


async def worker_loop(text: str, learn: bool, concurrency: int, seconds: float) -> dict:
    policy = parse_policy(text)
    key = policy.keys[0].name
    limiter = Limiter.from_policy(policy)
    counts = {"admitted": 0, "refused": 0}
    deadline = time.monotonic() + seconds

    async def one() -> None:
        while time.monotonic() < deadline:
            ticket = limiter.borrow(key, INPUT_TOKENS, MAX_OUTPUT)
            try:
                await ticket.admit("sim")
            except (ClientLimited, DeploymentLimited):
                counts["refused"] += 1
                await asyncio.sleep(0.005)
                continue
            counts["admitted"] += 1
            await asyncio.sleep(0)  # the upstream call: other tasks run meanwhile
            if learn:
                limiter.learner.learn("sim", 200, HEADERS)
            limiter.give_back(ticket, USED)

    await asyncio.gather(*(one() for _ in range(concurrency)))
    await limiter.aclose()
    return counts


def worker(text: str, learn: bool, concurrency: int, seconds: float, out) -> None:
    out.put(uvloop.run(worker_loop(text, learn, concurrency, seconds)))


def run_workers(text: str, learn: bool, processes: int, concurrency: int, seconds: float) -> dict:
    out: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=worker, args=(text, learn, concurrency, seconds, out)) for _ in range(processes)]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=seconds + 60) for _ in procs]
    for proc in procs:
        proc.join(10)
    return {key: sum(r[key] for r in results) for key in results[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64, help="admitting tasks per process")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--burst-rpm", type=int, default=3000)
    args = parser.parse_args()
    port = free_port()
    directory = tempfile.mkdtemp(prefix="laneway-bench-scale-")
    redis = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", directory], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    rows = {}
    try:
        while subprocess.run([shutil.which("redis-cli"), "-p", str(port), "ping"], capture_output=True, check=False).returncode:
            time.sleep(0.05)
        for name, (client, deployment, learn, store) in SCENARIOS.items():
            before, started = redis_info(port), time.monotonic()
            counts = run_workers(policy_text(url, name, client, deployment, store), learn, args.processes, args.concurrency,
                                 args.seconds)
            elapsed, after = time.monotonic() - started, redis_info(port)
            admitted = counts["admitted"]
            cpu_s = after["cpu_s"] - before["cpu_s"]
            calls = after["evalsha"] - before["evalsha"]
            rows[name] = {
                "admissions": admitted, "refused": counts["refused"], "admissions_per_s": round(admitted / elapsed),
                "redis_cpu_us_per_admission": round(cpu_s * 1e6 / admitted, 2),
                "admissions_per_redis_core_s": round(admitted / cpu_s) if cpu_s else None,
                "evalsha_per_admission": round(calls / admitted, 3),
                "evalsha_usec_per_call": round((after["evalsha_usec"] - before["evalsha_usec"]) / max(1, calls), 2),
                "redis_commands_per_admission": round((after["commands"] - before["commands"]) / admitted, 1),
            }
        for name in ("realistic", "leased"):
            client, deployment, learn, store = SCENARIOS[name]
            client = client.replace("rpm: 100000000", f"rpm: {args.burst_rpm}")
            burst = run_workers(policy_text(url, f"burst-{name}", client, deployment, store), learn, args.processes,
                                args.concurrency, 1.0)
            rows[f"burst-{name}"] = {"rpm": args.burst_rpm, "admitted": burst["admitted"], "refused": burst["refused"],
                                     "exact": burst["admitted"] <= args.burst_rpm}
    finally:
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(directory, ignore_errors=True)
    for name, row in rows.items():
        print(f"{name:10s} {json.dumps(row)}")
    print(f"({args.processes} processes x {args.concurrency} tasks, {args.seconds:g} s per scenario)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
