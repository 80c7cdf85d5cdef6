"""What permessage-deflate costs and saves on upstream socket turns, per zlib level.

bench/websocket.py's seeded 20-turn agent conversation, as Laneway sends it upstream:
  (b+)  continuation turns: instructions + tools + previous_response_id + the turn's new items
        (Responses WebSocket mode re-sends instructions and tools every turn)
  (c)   an HTTP client's full context every turn
each through one ``proxy.upstream.ws_deflate.Deflate`` (context takeover, as negotiated with the
simulator), its level patched per row. Reports CPU per turn (process time, median of --passes
passes over the 20 turns) and bytes per turn before -> after. No network: the WAN effect is
bench/websocket_wan.py's.

    .venv/bin/python bench/ws_deflate.py [--levels 1,4,6] [--seed 7] [--passes 9]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.websocket import TURNS, Conversation
from proxy.upstream import ws_deflate


def turns(seed: int) -> dict[str, list[bytes]]:
    convo, continued, full, history = Conversation(seed), [], [], []
    for turn in range(TURNS):
        new = convo.first_input(turn)
        previous = {"previous_response_id": f"resp_{turn - 1}"} if turn else {}
        continued.append(orjson.dumps({"type": "response.create", **convo.request("m", new), **previous}))
        history = [*history, *new, {"type": "function_call", "call_id": f"call_{turn:03d}", "name": "shell",
                                    "arguments": "{}"}]
        full.append(orjson.dumps({"type": "response.create", **convo.request("m", history)}))
    return {"(b+) continuation turns": continued, "(c) full context": full}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,4,6")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--passes", type=int, default=9)
    args = parser.parse_args()
    messages = turns(args.seed)
    print(f"zlib level | mode | CPU us/turn p50 (max) | KB/turn plain -> deflated   "
          f"(seed {args.seed}, {args.passes} passes; Laneway uses level {ws_deflate._LEVEL})")
    default = ws_deflate._LEVEL
    try:
        for level in (int(x) for x in args.levels.split(",")):
            ws_deflate._LEVEL = level
            for mode, per_turn in messages.items():
                cpu, sent = [], 0
                for _ in range(args.passes):
                    deflate = ws_deflate.Deflate()
                    start = time.process_time()
                    sent = sum(len(deflate.deflate(m) or m) for m in per_turn)
                    cpu.append((time.process_time() - start) / TURNS * 1e6)
                plain = sum(map(len, per_turn)) / TURNS / 1000
                print(f"{level:10d} | {mode:24s} | {statistics.median(cpu):7.0f} ({max(cpu):.0f}) | "
                      f"{plain:.1f} -> {sent / TURNS / 1000:.2f}")
    finally:
        ws_deflate._LEVEL = default
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
