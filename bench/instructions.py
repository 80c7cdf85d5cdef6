"""The proxy's CPU instructions per non-streaming request, counted by valgrind's callgrind.

CPU time per request (bench/overhead.py) moves with whatever else the machine runs; an
instruction count does not, so it compares trees on a shared machine. One run starts the
zero-delay simulator and `laneway serve` under callgrind, warms it with 300 sequential
requests, zeroes the counters, sends ``--requests`` more one at a time and reads the total.
Kernel time (syscalls) is not counted; periodic background work is, and grows with the run's
wall time, so compare runs made one after the other, not side by side.

    .venv/bin/python bench/instructions.py [--requests 500] [--log-level warning]
        [--upstream-headers openai|none] [--proxy-root DIR]
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.overhead import UNLIMITED, Target, free_port, wait_listening


async def sequential(target: Target, n: int) -> None:
    for _ in range(n):
        await target.call()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--log-level", default="info", help="the proxy's; info writes the access log (default info)")
    parser.add_argument("--upstream-headers", choices=("openai", "none"), default="openai")
    parser.add_argument("--proxy-root", type=Path, default=ROOT, help="the checkout whose proxy runs (default this one)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed")

    sim_port, proxy_port = free_port(), free_port()
    work = Path(tempfile.mkdtemp(prefix="laneway-instructions-"))
    policy = work / "policy.yaml"
    policy.write_text(
        "version: 1\nauth: open\n"
        f"deployments:\n  - {{name: sim, provider: openai, model: sim-instant, base_url: 'http://127.0.0.1:{sim_port}/v1'}}\n"
        "routes:\n  - {name: bench, candidates: [sim]}\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    sim = subprocess.Popen([sys.executable, "-m", "proxy.simulate", "--profile", "instant", "--port", str(sim_port), *UNLIMITED,
                            *(("--no-provider-headers",) if args.upstream_headers == "none" else ())],
                           env=env, stdout=subprocess.DEVNULL)
    root = args.proxy_root.resolve()
    with open(work / "proxy.log", "w") as log:
        proxy = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={work}/callgrind.out",
                                  sys.executable, "-m", "proxy.cli", "serve", "--policy", str(policy), "--port", str(proxy_port),
                                  "--log-level", args.log_level],
                                 env=dict(env, PYTHONPATH=str(root)), cwd=root, stderr=log, stdout=subprocess.DEVNULL)
    try:
        wait_listening(sim_port, sim)
        wait_listening(proxy_port, proxy, timeout=300)
        target = Target("proxy", f"http://127.0.0.1:{proxy_port}/v1", "bench")
        uvloop.run(sequential(target, 300))
        subprocess.run(["callgrind_control", "-z", str(proxy.pid)], check=True, capture_output=True)
        uvloop.run(sequential(target, args.requests))
        subprocess.run(["callgrind_control", "-d", str(proxy.pid)], check=True, capture_output=True)
        time.sleep(1)
    finally:
        for proc in (proxy, sim):
            proc.terminate()
            proc.wait(60)
    [dump] = [f for f in glob.glob(f"{work}/callgrind.out*") if re.search(r"\.\d+$", f)]
    total = int(re.search(r"^(?:summary|totals): (\d+)", Path(dump).read_text(), re.MULTILINE).group(1))
    shutil.rmtree(work)
    print(f"proxy {root} (log {args.log_level}, upstream headers {args.upstream_headers}): "
          f"{total / args.requests / 1e3:.1f} k instructions per request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
