"""The lean RESP connection the admission call uses, against a real redis-server."""
from __future__ import annotations

import asyncio
import gc
import os
import signal

import pytest
from redis.exceptions import ConnectionError, NoScriptError, ResponseError, TimeoutError

from proxy.store.connect import Target, lean
from tests.redis_support import RedisServer


def run(coro):
    return asyncio.run(coro)


def lean_to(url: str, timeout_s: float):
    return lean(Target(url, timeout_s=timeout_s))


@pytest.fixture
def server():
    with RedisServer() as redis:
        yield redis


def test_pipeline_replies_in_order_with_errors_as_values(server):
    async def main():
        client = lean_to(server.url, 0.5)
        try:
            return await client.execute([
                (b"SET", "lw:resp:a", 7), (b"INCRBY", "lw:resp:a", 5), (b"GET", "lw:resp:a"),
                (b"EVALSHA", "0" * 40, 0), (b"NOSUCHCOMMAND",), (b"EVAL", "return {1, 2, 'x'}", 0),
            ])
        finally:
            await client.aclose()

    ok, incr, value, noscript, unknown, table = run(main())
    assert (ok, incr, value) == (b"OK", 12, b"12")
    assert isinstance(noscript, NoScriptError)
    assert isinstance(unknown, ResponseError) and not isinstance(unknown, NoScriptError)
    assert table == [1, 2, b"x"]


def test_concurrent_callers_share_one_connection(server):
    async def main():
        client = lean_to(server.url, 0.5)
        try:
            replies = await asyncio.gather(*(client.execute([(b"INCR", "lw:resp:n")]) for _ in range(200)))
            return sorted(r[0] for r in replies), server.cli("CLIENT", "LIST").count("\n") + 1
        finally:
            await client.aclose()

    values, clients = run(main())
    assert values == list(range(1, 201))
    assert clients <= 2  # ours and redis-cli's


def test_a_hung_server_times_out_then_the_connection_recovers(server):
    async def main():
        client = lean_to(server.url, 0.2)
        try:
            await client.execute([(b"PING",)])
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                loop = asyncio.get_running_loop()
                started = loop.time()
                with pytest.raises(TimeoutError):
                    await client.execute([(b"PING",)])
                assert loop.time() - started < 1
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            return await client.execute([(b"PING",)])
        finally:
            await client.aclose()

    assert run(main()) == [b"PONG"]


def test_a_restarted_server_fails_in_flight_calls_then_reconnects(server):
    async def main():
        client = lean_to(server.url, 0.5)
        try:
            await client.execute([(b"PING",)])
            server.stop()
            with pytest.raises(ConnectionError):
                await client.execute([(b"PING",)])
            with pytest.raises(ConnectionError):
                await client.execute([(b"PING",)])  # nothing listening: a clean refusal, not a hang
            server.start()
            return await client.execute([(b"PING",)])
        finally:
            await client.aclose()

    assert run(main()) == [b"PONG"]


def test_password_and_database_from_the_url(server):
    server.cli("CONFIG", "SET", "requirepass", "s3cret")

    async def main(url: str):
        client = lean_to(url, 0.5)
        try:
            return await client.execute([(b"SET", "lw:resp:db", 1), (b"CLIENT", "INFO")])
        finally:
            await client.aclose()

    ok, info = run(main(f"redis://:s3cret@127.0.0.1:{server.port}/3"))
    assert ok == b"OK" and b" db=3 " in info
    with pytest.raises(ResponseError):
        run(main(f"redis://:wrong@127.0.0.1:{server.port}/0"))


def test_tls_urls_stay_with_redis_py():
    assert lean_to("rediss://example.invalid:6380/0", 0.5) is None


def test_a_paused_server_is_back_pressure_not_an_outage(server):
    """Replies 200 ms late (past the 100 ms timeout, short of three in a row) are waited for,
    every caller gets its own, and the connection stays up."""

    async def main():
        client = lean_to(server.url, 0.1)
        try:
            (before,) = await client.execute([(b"CLIENT", "ID")])
            server.cli("CLIENT", "PAUSE", "200", "ALL")
            replies = await asyncio.gather(*(client.execute([(b"INCR", "lw:resp:paused")]) for _ in range(50)))
            (after,) = await client.execute([(b"CLIENT", "ID")])
            return sorted(r[0] for r in replies), before, after
        finally:
            await client.aclose()

    values, before, after = run(main())
    assert values == list(range(1, 51))
    assert after == before


def test_a_cancelled_call_still_takes_its_reply_off_the_stream(server):
    async def main():
        client = lean_to(server.url, 0.5)
        try:
            await client.execute([(b"SET", "lw:resp:first", "first")])
            server.cli("CLIENT", "PAUSE", "100", "ALL")
            abandoned = asyncio.ensure_future(client.execute([(b"GET", "lw:resp:first")]))
            await asyncio.sleep(0.02)
            abandoned.cancel()
            return await client.execute([(b"INCR", "lw:resp:second")])
        finally:
            await client.aclose()

    assert run(main()) == [1]  # its own reply, not the abandoned GET's


def test_a_hung_servers_failed_calls_leave_no_unretrieved_errors(server):
    unretrieved = []

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: unretrieved.append(context["message"]))
        client = lean_to(server.url, 0.05)
        try:
            await client.execute([(b"PING",)])
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                await client.execute([(b"PING",), (b"PING",), (b"PING",)])
            except TimeoutError:
                failed = True
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
        finally:
            await client.aclose()
        await asyncio.sleep(0)
        gc.collect()  # a pipeline's other errors, had nobody retrieved them, are reported now
        return failed

    assert run(main())
    assert unretrieved == []
