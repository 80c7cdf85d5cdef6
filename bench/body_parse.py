"""What a chat body's JSON work costs per candidate, and where msgspec and orjson disagree.

Issue 16 item 2 asks for 300 KiB in <= 0.6 ms proxy CPU. The proxy pays a full ``orjson.loads``
(validation: a provider would refuse what orjson refuses) and msgspec's top-level member spans
(the exact ``model`` splice). A cheaper validation must accept exactly what orjson accepts; this
script measures the pieces such a path would be built from, on bench/overhead.py's bodies:

- ``orjson.loads`` and msgspec's full decode (both build every object);
- msgspec's ``dict[str, Raw]`` decode (top-level spans, values skipped: what the splice already pays);
- a UTF-8 check (``bytes.isascii``, else ``bytes.decode``), which the skipping decode lacks;
- scans for a float that overflows (``1e999``), which the skipping decode also accepts;

and prints which hostile bodies the skipping decode accepts while orjson refuses them (those a
fast path must catch with a check of its own; msgspec refusing more is harmless: such a body
can be handed to orjson for the 400's wording).

``--floor`` measures the transport's share instead: a bare uvicorn app (httptools, uvloop, as
``laneway serve`` runs) that reads each body and answers ``{}``, its user and system CPU per
request from /proc, and how many socket reads and ``receive()`` messages a body took.

    PYTHONPATH=$PWD .venv/bin/python bench/body_parse.py [--body-kb 30,300] [--repeat 50] [--floor]
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import orjson
import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import chat_body  # noqa: E402  (the same bodies as the body-size profile)

_MEMBERS = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ANY = msgspec.json.Decoder()
# A float overflows only with a 3-digit exponent or a very long integer part: a conservative screen.
_EXPONENT, _DIGITS = re.compile(rb"[eE][-+]?[0-9]{3}"), re.compile(rb"[0-9]{200}")

HOSTILE = [
    b'{"a":"\xff"}', b'{"a":"\xc3"}', b'{"a":"\xed\xa0\x80"}', b'{"a":"\xf4\x90\x80\x80"}', b'{"a":"\xc0\x80"}',
    b'{"a":"\\ud800"}', b'{"a":"\\udc00"}', b'{"a":"\\ud800x"}', b'{"a":"\\ud800\\u0041"}', b'{"a":"\\ud800\\udc00"}',
    b'{"a":1e999}', b'{"a":-1e999}', b'{"a":2e308}', b'{"a":1.7976931348623159e308}', b'{"a":1e-400}',
    b'{"a":' + b"9" * 400 + b"}", b'{"a":18446744073709551616}', b'{"a":"\x01"}', b'{"a":"\\x"}', b'{"a":01}',
    b'{"a":1.}', b'{"a":NaN}', b'{"a":[1,]}', b'\xef\xbb\xbf{"a":1}', b'{"a":1}x', b'{"\xff":1}',
    b'{"a":' + b"[" * 1000 + b"]" * 1000 + b"}", b'{"a":' + b"[" * 1100 + b"]" * 1100 + b"}",
]


def per_call_us(fn: Callable[[], object], repeat: int) -> float:
    """Median of five batches of ``repeat`` calls, in microseconds per call."""
    batches = []
    for _ in range(5):
        start = time.process_time()
        for _ in range(repeat):
            fn()
        batches.append((time.process_time() - start) / repeat * 1e6)
    return statistics.median(batches)


def accepted(decode: Callable[[bytes], object], body: bytes) -> bool:
    try:
        decode(body)
    except (ValueError, RecursionError, msgspec.DecodeError):
        return False
    return True


def _serve(port: int) -> None:
    """The bare server; it answers with its counts so far: socket reads, receive() messages."""
    counts = [0, 0]
    data_received = HttpToolsProtocol.data_received

    def counted(self: HttpToolsProtocol, data: bytes) -> None:
        counts[0] += 1
        data_received(self, data)

    HttpToolsProtocol.data_received = counted  # type: ignore[method-assign]

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
            counts[1] += 1
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"24")]})
        await send({"type": "http.response.body", "body": b"%012d%012d" % tuple(counts)})

    uvicorn.run(app, port=port, loop="uvloop", http="httptools", log_level="warning", lifespan="off", access_log=False)


def _cpu_ticks(pid: int) -> tuple[int, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])  # utime, stime


async def _post_many(port: int, body: bytes, n: int) -> tuple[int, int]:
    """The server's counts after ``n`` requests of ``body``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"POST / HTTP/1.1\r\nhost: bench\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    for _ in range(n):
        writer.write(request)
        await reader.readuntil(b"\r\n\r\n")
        answer = await reader.readexactly(24)
    writer.close()
    return int(answer[:12]), int(answer[12:])


def floor(sizes: list[int], n: int) -> None:
    port = 18000 + os.getpid() % 20000
    server = multiprocessing.Process(target=_serve, args=(port,), daemon=True)
    server.start()
    try:
        time.sleep(1.5)
        hz = os.sysconf("SC_CLK_TCK")
        print(f"{'body':16s} {'user ms/req':>12s} {'system ms/req':>14s} {'reads/req':>10s} {'receives/req':>13s}")
        for kb in sizes:
            body = chat_body(kb, "m", "history")
            reads0, receives0 = uvloop.run(_post_many(port, body, 50))  # warm up
            user0, system0 = _cpu_ticks(server.pid)
            reads, receives = uvloop.run(_post_many(port, body, n))
            user1, system1 = _cpu_ticks(server.pid)
            print(f"{'history ' + str(kb) + ' KiB':16s} {(user1 - user0) / hz / n * 1e3:12.3f} "
                  f"{(system1 - system0) / hz / n * 1e3:14.3f} {(reads - reads0) / n:10.2f} "
                  f"{(receives - receives0) / n:13.2f}")
    finally:
        server.terminate()
        server.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--body-kb", default="30,300")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--floor", action="store_true", help="measure a bare uvicorn reading the bodies instead")
    args = parser.parse_args()
    if args.floor:
        floor([1, *map(int, args.body_kb.split(","))], args.repeat * 60)
        return 0
    candidates: dict[str, Callable[[bytes], object]] = {
        "orjson.loads": orjson.loads,
        "msgspec full decode": _ANY.decode,
        "msgspec top-level spans": _MEMBERS.decode,
        "UTF-8 check": lambda raw: raw.isascii() or raw.decode(),
        "overflow screen (2 regexes)": lambda raw: _EXPONENT.search(raw) or _DIGITS.search(raw),
    }
    print(f"{'body':16s} {'candidate':30s} {'CPU us/call':>12s}")
    for shape in ("history", "string"):
        for kb in map(int, args.body_kb.split(",")):
            raw = chat_body(kb, "m", shape)
            for name, fn in candidates.items():
                print(f"{shape + ' ' + str(kb) + ' KiB':16s} {name:30s} {per_call_us(lambda: fn(raw), args.repeat):12.1f}")
    print("\nhostile bodies the top-level span decode accepts and orjson refuses:")
    for body in HOSTILE:
        if accepted(_MEMBERS.decode, body) and not accepted(orjson.loads, body):
            print("  ", body[:60])
    print("refused by msgspec, accepted by orjson (harmless: hand them to orjson):")
    for body in HOSTILE:
        if accepted(orjson.loads, body) and not accepted(_MEMBERS.decode, body):
            print("  ", body[:60])
    return 0


if __name__ == "__main__":
    sys.exit(main())
