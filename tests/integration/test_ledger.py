"""The usage ledger against the simulated provider's own counters, through the real proxy and a real Redis."""
from __future__ import annotations

import asyncio
import hashlib
import time
from decimal import Decimal

import httpx
import openai
import pytest
import redis

from proxy.call import Outcome
from proxy.pricing.ledger import SEP, Ledger
from proxy.store.connect import Target
from proxy.store.usage import KEY_PREFIX, MemoryUsageStore, RedisUsageStore
from tests.redis_support import RedisServer
from tests.support import proxy_from_yaml, simulator

MESSAGES = [{"role": "user", "content": "count the tokens of this request exactly please"}]
ALICE, BOB, ADMIN = "lw-alice-ledger", "lw-bob-ledger", "lw-admin-ledger"

POLICY = """\
version: 1
auth: keys
keys:
  - {{name: alice, sha256: {alice}, team: platform}}
  - {{name: bob, sha256: {bob}}}
  - {{name: ops, sha256: {admin}, admin: true}}
deployments:
  - name: gpu-vllm
    provider: vllm
    model: sim-codex
    base_url: {sim}/v1
  - name: gpu-openai
    provider: openai
    model: sim-spark
    base_url: {sim}/v1
  - name: slow-vllm
    provider: vllm
    model: sim-codex
    base_url: {slow}/v1
  - name: late-vllm
    provider: vllm
    model: sim-codex
    base_url: {late}/v1
routes:
  - name: codex
    candidates: [gpu-vllm]
  - name: hedged
    strategy: fallback
    candidates: [late-vllm, gpu-vllm]
    hedge: {{after_ms: 50}}
ledger:
  flush_interval_s: 0.05
{redis}
prices:
  sim-codex:   # a preview: provisional price
    - {{effective_from: 2020-01-01, input_per_mtok: 0.5, output_per_mtok: 2, status: provisional}}
"""


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def sim():
    with simulator("gpu", ttft_ms=2, tokens_per_s=2000) as server:
        yield server


@pytest.fixture(scope="module")
def slow_sim():
    """One token per 100 ms, so a client cancelling between two tokens does so while nothing is in flight."""
    with simulator("gpu", ttft_ms=2, tokens_per_s=10) as server:
        yield server


@pytest.fixture(scope="module")
def late_sim():
    """Slow to its first token (1.5 s): a hedged route's first candidate, which the hedge beats."""
    with simulator("gpu", ttft_ms=1500, tokens_per_s=2000) as server:
        yield server


@pytest.fixture
def sims(sim, slow_sim, late_sim):
    for server in (sim, slow_sim, late_sim):
        httpx.post(server.url + "/sim/reset").raise_for_status()
    return sim, slow_sim, late_sim


@pytest.fixture
def redis_server():
    with RedisServer() as server:
        yield server


def make_proxy(tmp_path, sims, redis_url: str | None):
    text = POLICY.format(alice=sha(ALICE), bob=sha(BOB), admin=sha(ADMIN), sim=sims[0].url, slow=sims[1].url, late=sims[2].url,
                         redis=f"  redis_url: {redis_url}" if redis_url else "")
    return proxy_from_yaml(tmp_path, text)


def sim_stats(sims) -> dict[str, int]:
    """The providers' own counters, summed over the simulators."""
    totals = {"requests": 0, "input_tokens": 0, "output_tokens": 0, "disconnects": 0}
    for server in sims:
        stats = httpx.get(server.url + "/sim/stats").json()
        for name in totals:
            totals[name] += stats[name]
    return totals


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def redis_totals(url: str, deployment: str | None = None) -> dict[str, int]:
    """Sum every ledger hash in the (test's own) Redis by token kind (of one deployment's rows, if given)."""
    client = redis.Redis.from_url(url)
    totals: dict[str, int] = {}
    for name in client.scan_iter(match=KEY_PREFIX + "*"):
        for field, value in client.hgetall(name).items():
            parts = field.decode().split(SEP)
            if deployment is None or parts[0] == deployment:
                totals[parts[-1]] = totals.get(parts[-1], 0) + int(value)
    client.close()
    return totals


HEDGED = 2  # hedged streams per drive_traffic: the late first candidate loses each race, cancelled before its first token


def drive_traffic(proxy, sims) -> None:
    """Non-streamed and streamed calls on chat, completions and responses, one stream cancelled midway,
    and hedged streams whose losing attempt is billed from the usage its upstream had reported."""
    alice = openai.OpenAI(base_url=proxy.url + "/v1", api_key=ALICE, max_retries=0)
    bob = openai.OpenAI(base_url=proxy.url + "/v1", api_key=BOB, max_retries=0)
    alice.chat.completions.create(model="codex", messages=MESSAGES, max_tokens=7)
    list(alice.chat.completions.create(model="codex", messages=MESSAGES, max_tokens=9, stream=True))
    list(bob.chat.completions.create(model="codex", messages=MESSAGES, max_tokens=5, stream=True,
                                     stream_options={"include_usage": True}))
    bob.completions.create(model="gpu-openai", prompt="one two three", max_tokens=4)
    bob.responses.create(model="gpu-openai", input="hello there", max_output_tokens=6)
    list(alice.responses.create(model="gpu-openai", input="stream me", max_output_tokens=8, stream=True))
    bob.embeddings.create(model="gpu-openai", input="embed these four words")
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", headers={"authorization": f"Bearer {ALICE}"},
                      json={"model": "slow-vllm", "messages": MESSAGES, "max_tokens": 2000, "stream": True}) as response:
        for line in response.iter_lines():
            if "tok4" in line:
                break
    for stream_options in (None, {"include_usage": True}):
        raw = alice.chat.completions.with_raw_response.create(
            model="hedged", messages=MESSAGES + [{"role": "user", "content": "hedge"}], max_tokens=6, stream=True,
            **({"stream_options": stream_options} if stream_options else {}))
        assert raw.headers["x-laneway-deployment"] == "gpu-vllm"
        assert raw.headers["x-laneway-route-reason"] == "primary;hedge-won"
        assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices) == "tok1 tok2 tok3 tok4 tok5 tok6 "
    wait_for(lambda: sim_stats(sims)["disconnects"] == 1 + HEDGED)


def test_ledger_in_redis_equals_simulator_counters(tmp_path, sims, redis_server):
    with make_proxy(tmp_path, sims, redis_server.url) as proxy:
        drive_traffic(proxy, sims)
        stats = sim_stats(sims)
        assert httpx.get(sims[1].url + "/sim/stats").json()["output_tokens"] < 20, "the cancelled stream stopped midway"
        wait_for(lambda: redis_totals(redis_server.url).get("requests") == stats["requests"])
        totals = redis_totals(redis_server.url)
        assert totals["input"] == stats["input_tokens"]
        assert totals["output"] == stats["output_tokens"]
        assert totals["requests"] == stats["requests"] == 8 + 2 * HEDGED
        assert totals.get("estimated", 0) == 0, "every request, the cancelled ones too, billed from provider-reported usage"
        # The hedge losers are on their own deployment's rows, with what that upstream produced.
        late = httpx.get(sims[2].url + "/sim/stats").json()
        assert (late["requests"], late["disconnects"], late["output_tokens"]) == (HEDGED, HEDGED, 0)
        assert late["input_tokens"] > 0
        lost = redis_totals(redis_server.url, "late-vllm")
        assert (lost["requests"], lost["input"], lost.get("output", 0)) == (HEDGED, late["input_tokens"], 0)
        assert lost.get("estimated", 0) == 0


def test_non_streamed_hedge_loser_is_billed_as_an_estimate(tmp_path, sims, redis_server):
    """A non-streamed loser cancelled before its response arrived reported nothing: prompt estimate, 0 output, flagged."""
    with make_proxy(tmp_path, sims, redis_server.url) as proxy:
        alice = openai.OpenAI(base_url=proxy.url + "/v1", api_key=ALICE, max_retries=0)
        raw = alice.chat.completions.with_raw_response.create(model="hedged", messages=MESSAGES, max_tokens=4)
        assert raw.headers["x-laneway-route-reason"] == "primary;hedge-won" and raw.parse().usage.completion_tokens == 4
        wait_for(lambda: httpx.get(sims[2].url + "/sim/stats").json()["disconnects"] == 1)
        wait_for(lambda: redis_totals(redis_server.url).get("requests") == 2)
        lost, won = redis_totals(redis_server.url, "late-vllm"), redis_totals(redis_server.url, "gpu-vllm")
        late, fast = httpx.get(sims[2].url + "/sim/stats").json(), httpx.get(sims[0].url + "/sim/stats").json()
        assert (lost["requests"], lost["estimated"], lost.get("output", 0), late["output_tokens"]) == (1, 1, 0, 0)
        assert lost["input"] >= late["input_tokens"] > 0, "the body-size estimate never bills less than the prompt"
        assert (won["input"], won["output"], won.get("estimated", 0)) == (fast["input_tokens"], fast["output_tokens"], 0)


def test_memory_ledger_and_admin_endpoint(tmp_path, sims):
    with make_proxy(tmp_path, sims, None) as proxy:
        drive_traffic(proxy, sims)
        stats = sim_stats(sims)
        assert httpx.get(proxy.url + "/admin/cost", headers={"authorization": f"Bearer {ALICE}"}).status_code == 403
        assert httpx.get(proxy.url + "/admin/cost").status_code == 401
        body = httpx.get(proxy.url + "/admin/cost?by=key", headers={"authorization": f"Bearer {ADMIN}"}).json()
        totals = body["totals"]["tokens"]
        assert (totals["input"], totals["output"], totals["requests"]) == (
            stats["input_tokens"], stats["output_tokens"], stats["requests"])
        by_key = {line["group"]: line for line in body["lines"]}
        assert set(by_key) == {"alice", "bob"}
        # sim-codex is provisionally priced; sim-spark has no price at all: flagged, never $0 "confirmed".
        assert body["totals"]["unpriced_models"] == ["sim-spark"]
        assert body["totals"]["usd"]["confirmed"] == "0.00"
        codex = httpx.get(proxy.url + "/admin/cost?by=model", headers={"authorization": f"Bearer {ADMIN}"}).json()
        line = next(line for line in codex["lines"] if line["group"] == "sim-codex")
        expected = (line["tokens"]["input"] * 0.5 + line["tokens"]["output"] * 2) / 1e6
        assert float(line["usd"]["exact_total"]) == pytest.approx(expected)
        assert line["usd"]["provisional"] == line["usd"]["total"] and line["unpriced_tokens"]["input"] == 0
        # Plain running totals for the metrics exporter (the admin call above flushed the ledger).
        accounting = proxy.app.state.accounting
        assert accounting.unpriced_tokens["sim-spark"] == body["totals"]["unpriced_tokens"]["input"] + \
            body["totals"]["unpriced_tokens"]["output"]
        assert accounting.spend_usd["provisional"] == Decimal(line["usd"]["exact_total"])
        assert accounting.ledger.counters.recorded == stats["requests"] and accounting.ledger.counters.overflow_requests == 0
        bad = httpx.get(proxy.url + "/admin/cost?by=colour", headers={"authorization": f"Bearer {ADMIN}"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_grouping"


def test_redis_outage_during_ledger_writes_loses_nothing(tmp_path, sims):
    # appendfsync always: what Redis acknowledged survives its own kill -9, so any loss would be ours.
    with RedisServer(extra=("--appendonly", "yes", "--appendfsync", "always")) as server, \
            make_proxy(tmp_path, sims, server.url) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=ALICE, max_retries=0)
        client.chat.completions.create(model="codex", messages=MESSAGES, max_tokens=3)
        wait_for(lambda: redis_totals(server.url).get("requests") == 1)
        server.stop()
        for n in range(1, 6):  # the proxy keeps serving while its ledger cannot write
            assert client.chat.completions.create(model="codex", messages=MESSAGES, max_tokens=n).usage.completion_tokens == n
        list(client.chat.completions.create(model="codex", messages=MESSAGES, max_tokens=11, stream=True))
        time.sleep(0.3)  # several flushes fail meanwhile
        down = httpx.get(proxy.url + "/admin/cost", headers={"authorization": f"Bearer {ADMIN}"}, timeout=10)
        assert down.status_code == 503 and down.json()["error"]["code"] == "ledger_unavailable"
        assert proxy.app.state.accounting.ledger.counters.flush_errors >= 2
        assert proxy.app.state.accounting.ledger.counters.buffered_rows == 1  # one (hour, deployment, key) row
        server.start()
        stats = sim_stats(sims)
        wait_for(lambda: redis_totals(server.url).get("requests") == stats["requests"])
        totals = redis_totals(server.url)
        assert (totals["input"], totals["output"]) == (stats["input_tokens"], stats["output_tokens"])
        assert stats["output_tokens"] == 3 + 1 + 2 + 3 + 4 + 5 + 11


def test_redis_outage_across_a_restart_loses_nothing(tmp_path, sims):
    """The proxy stops while its ledger's Redis is down; the next start (same state directory) writes it all."""
    with RedisServer(extra=("--appendonly", "yes", "--appendfsync", "always")) as server:
        with make_proxy(tmp_path, sims, server.url) as proxy:
            client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=ALICE, max_retries=0)
            client.chat.completions.create(model="codex", messages=MESSAGES, max_tokens=3)
            wait_for(lambda: redis_totals(server.url).get("requests") == 1)
            server.stop()
            for n in range(1, 5):
                client.chat.completions.create(model="codex", messages=MESSAGES, max_tokens=n)
            list(client.chat.completions.create(model="codex", messages=MESSAGES, max_tokens=9, stream=True))
        server.start()
        assert redis_totals(server.url)["requests"] == 1  # the rest waited on this machine's disk
        with make_proxy(tmp_path, sims, server.url):
            stats = sim_stats(sims)
            wait_for(lambda: redis_totals(server.url).get("requests") == stats["requests"])
            totals = redis_totals(server.url)
            assert (totals["input"], totals["output"]) == (stats["input_tokens"], stats["output_tokens"])
            assert stats["output_tokens"] == 3 + 1 + 2 + 3 + 4 + 9
        time.sleep(0.2)
        assert redis_totals(server.url)["requests"] == stats["requests"]  # replayed once, not twice


def outcome(deployment: str, inp: int, out: int, key: str = "k") -> Outcome:
    return Outcome("r", "chat", "route", key, None, deployment=deployment, input_tokens=inp, output_tokens=out, status=200)


def test_ledger_buffer_is_bounded_and_counts_overflow():
    class DeadStore(MemoryUsageStore):
        async def add(self, batch, stamp=None):
            raise ConnectionError("down")

    ledger = Ledger(DeadStore(), lambda name: name, max_buffered=2)
    for name in ("a", "b", "c", "c"):
        ledger.record(outcome(name, 10, 5))
    assert asyncio.run(ledger.flush()) is False
    assert ledger.counters.overflow_requests == 2 and ledger.counters.overflow_tokens == 30
    assert ledger.counters.flush_errors == 1 and ledger.counters.recorded == 2


class ReplyLosingRelay:
    """A TCP relay to Redis that, while ``losing``, passes requests on but drops the connection instead
    of passing the reply back: a write Redis applied whose answer never arrived."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.losing = False
        self.lost = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, client_r, client_w) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.port)

        async def pump(reader, writer, replies: bool) -> None:
            try:
                while data := await reader.read(65536):
                    if replies and self.losing:
                        self.lost += 1
                        break
                    writer.write(data)
                    await writer.drain()
            except OSError:
                pass
            finally:
                for w in (client_w, server_w):
                    w.close()
        await asyncio.gather(pump(client_r, server_w, False), pump(server_r, client_w, True))


def test_a_write_whose_reply_was_lost_is_resent_and_counted_once(redis_server):
    async def main():
        relay = ReplyLosingRelay(redis_server.port)
        port = await relay.start()
        store = RedisUsageStore(Target(f"redis://127.0.0.1:{port}/0", timeout_s=1.0))
        ledger = Ledger(store, {"dep": "m"}.get, clock=lambda: 3600 * 480_000 + 5)
        await store.client.ping()  # the connection is up before replies start getting lost
        relay.losing = True
        for n in (3, 4):
            ledger.record(outcome("dep", 100, n))
        lost = await ledger.flush()
        relay.losing = False
        ledger.record(outcome("dep", 1, 1))
        resent = await ledger.flush()
        rows = await ledger.read(480_000, 480_000)
        await store.close()
        relay.server.close()
        return lost, resent, relay.lost, rows

    lost, resent, dropped, rows = asyncio.run(main())
    assert (lost, resent) == (False, True) and dropped >= 1
    [row] = rows
    # Redis applied the first write; the resend under the same stamp added nothing, the new batch did.
    assert (row.tokens.requests, row.tokens.input, row.tokens.output) == (3, 201, 8)


def test_redis_store_round_trip(redis_server):
    async def main():
        store = RedisUsageStore(Target(redis_server.url, timeout_s=1.0))
        ledger = Ledger(store, {"dep": "model-x"}.get, clock=lambda: 3600 * 500_000 + 5)
        ledger.record(outcome("dep", 100, 20, key="alice"))
        ledger.record(Outcome("r2", "chat", "route", "alice", None, deployment="dep", input_tokens=50, cached_tokens=40,
                              output_tokens=30, reasoning_tokens=10, status=200))
        try:
            return await ledger.read(500_000, 500_000)
        finally:
            await store.close()

    rows = asyncio.run(main())
    assert len(rows) == 1
    row = rows[0]
    assert (row.hour, row.deployment, row.model, row.key, row.team) == (500_000, "dep", "model-x", "alice", "")
    assert row.tokens.as_dict() == {"input": 150, "cached": 40, "output": 50, "reasoning": 10, "requests": 2, "estimated": 2}


def test_vllm_streams_ask_for_usage_in_every_chunk():
    import orjson

    from proxy.upstream.body import rewrite_body

    raw = b'{"model":"codex","stream":true,"messages":[]}'
    out = orjson.loads(rewrite_body(raw, orjson.loads(raw), "m", True, continuous_usage=True))
    assert out["stream_options"] == {"include_usage": True, "continuous_usage_stats": True} and out["model"] == "m"
    raw = b'{"model":"codex","stream":true,"stream_options":{"include_usage":true},"messages":[]}'
    out = orjson.loads(rewrite_body(raw, orjson.loads(raw), "m", False, continuous_usage=True))
    assert out["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert rewrite_body(raw, orjson.loads(raw), "codex", False) == raw  # other providers: bytes untouched
