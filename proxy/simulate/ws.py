"""Responses WebSocket mode for the simulated provider (``GET /v1/responses`` upgraded).

Same token model, quotas and queued faults as HTTP; each SSE event the HTTP renderer
would send becomes one text frame. Turns on one socket run one at a time. Knobs for
tests, set in-process: ``down = True`` refuses upgrades (503) and drops a live socket at
its next ``response.create`` — a provider losing its WebSocket tier; ``forget()`` drops every
connection's remembered response — a provider restart.

Like the real provider, each connection remembers its last response (input + output), so
``previous_response_id`` plus new items continues it, billed for the whole conversation; any
other id is answered ``previous_response_not_found``; a continued turn waits only the profile's
continued shares of the per-request overhead and the TTFT (``Profile.first_token_s``).
``last_request`` is the last
``response.create`` as received and ``continued`` counts continuations, for tests.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from . import validate
from .answer import as_items, cues_from_items, plan, responses_functions
from .asgi import Receive, Scope, Send, SimulatedDrop, bearer_key, norm_path
from .render import ResponsesRenderer, Turn, response_fields
from .state import ProviderState
from .store import Stored
from .text import count_input_tokens, requested_output

_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
                429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class _Memory:
    """What one connection remembers: its last response's id and the conversation up to it."""

    __slots__ = ("id", "items", "epoch")

    def __init__(self) -> None:
        self.id: str | None = None
        self.items: list = []
        self.epoch = 0


def sse_frames(sse: bytes) -> list[bytes]:
    """The JSON payload of every SSE event in ``sse`` (renderer output is whole events)."""
    out = []
    for block in sse.split(b"\n\n"):
        i = block.find(b"data: ")
        if i >= 0:
            out.append(block[i + 6 :])
    return out


class _Client:
    """A socket's inbound side, read by a task so a turn notices the client leaving."""

    def __init__(self, receive: Receive) -> None:
        self.events: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.gone = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read(receive))

    async def _read(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.gone.set()
                self.events.put_nowait(None)
                return
            data = message.get("text")
            self.events.put_nowait(data.encode() if data is not None else message.get("bytes") or b"")

    async def pause(self, seconds: float) -> bool:
        """Sleep; False when the client left meanwhile."""
        if self.gone.is_set():
            return False
        try:
            async with asyncio.timeout(seconds):
                await self.gone.wait()
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self._task.cancel()


class SimulatedSocket:
    """ASGI handler for ``websocket`` scopes of one simulated provider."""

    def __init__(self, state: ProviderState) -> None:
        self.state = state
        self.down = False
        self.connections = 0  # accepted since start
        self.open = 0
        self.peak_open = 0
        self.turns = 0
        self.continued = 0
        self.last_request: dict[str, Any] | None = None
        self._epoch = 0

    def forget(self) -> None:
        """Every connection forgets its last response, as after a provider restart."""
        self._epoch += 1

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        if norm_path(scope["path"]) != "responses":
            await _deny(send, 404, "Only /v1/responses speaks WebSocket mode.")
            return
        if self.down:
            await _deny(send, 503, "Simulated: WebSocket mode is unavailable.")
            return
        if self.state.key is not None and bearer_key(scope["headers"]) != self.state.key:
            await _deny(send, 401, "Incorrect API key provided.")
            return
        await send({"type": "websocket.accept"})
        self.connections += 1
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        client = _Client(receive)
        memory = _Memory()
        memory.epoch = self._epoch
        try:
            while (data := await client.events.get()) is not None:
                await self._event(client, send, data, memory)
        finally:
            self.open -= 1
            client.close()

    async def _event(self, client: _Client, send: Send, data: bytes, memory: _Memory) -> None:
        """Handle one client event; a completed response becomes what a continuation may name."""
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            await _error(send, 400, "Messages must be JSON events.", None)
            return
        if not isinstance(event, dict) or event.get("type") != "response.create":
            if isinstance(event, dict) and event.get("type") == "response.processed":
                return
            await _error(send, 400, "Unsupported event type.", "unsupported_event")
            return
        if self.down:
            _drop("simulated: WebSocket tier went away")
        self.last_request = dict(event)  # as received, before a continuation is expanded
        try:
            validate.responses(event)
        except validate.InvalidRequest as exc:
            await _error(send, 400, exc.message, exc.code, param=exc.param)
            return
        previous = event.get("previous_response_id")
        own = as_items(event.get("input"))
        items = own
        if previous is not None:
            if previous != memory.id or memory.epoch != self._epoch:
                await _error(send, 400, f"Previous response with id '{previous}' not found.", "previous_response_not_found")
                return
            self.continued += 1
            items = memory.items + items
            event["input"] = items  # billed and answered as the whole conversation
        rid = f"resp_simws{self.state.next_id():016x}"
        if event.get("generate") is False:
            turn = Turn(rid=rid, model=str(event.get("model") or ""), created=int(time.time()), n=0,
                        input_tokens=0, capped=False)
            renderer = ResponsesRenderer(turn, response_fields(event))
            done = {**renderer.response("completed"), "output": []}  # warmed up: nothing generated
            for seq, (kind, response) in enumerate((("created", renderer.response("in_progress")),
                                                    ("completed", done))):
                frame = {"type": f"response.{kind}", "response": response, "sequence_number": seq}
                await send({"type": "websocket.send", "text": orjson.dumps(frame).decode()})
            memory.id, memory.items, memory.epoch = rid, items, self._epoch
            return
        self.turns += 1
        renderer = await self._generate(client, send, event, rid, items, previous is not None)
        if renderer is not None:
            output = renderer.output_items()
            memory.id, memory.items, memory.epoch = rid, items + output, self._epoch
            if event.get("store", True) is True:
                self.state.store.put(Stored.of(renderer.response(renderer.final_status), own, items + output))

    async def _generate(self, client: _Client, send: Send, body: dict[str, Any], rid: str,
                        items: list[Any], continued: bool) -> ResponsesRenderer | None:
        """Run one turn (``continued``: it named this connection's last response); its renderer
        when it completed, else None."""
        state = self.state
        stats = state.stats
        model = body.get("model")
        model = model if isinstance(model, str) and model else state.profile.model_ids[0]
        row = stats.model(model)
        stats.requests += 1
        row[0] += 1
        mode, arg = ("none", 0.0)
        if state.faults:
            mode, arg = state.faults.popleft()
            stats.faults += 1
        if mode == "error":
            await _error(send, int(arg), f"Simulated error {int(arg)}.", None)
            return None
        if mode == "hang":
            await client.gone.wait()
            stats.disconnects += 1
            return None
        if mode == "slow_first_byte" and not await client.pause(arg / 1000):
            stats.disconnects += 1
            return None
        cap, capped = requested_output(body, state.profile.default_output_tokens)
        input_tokens = count_input_tokens(body)
        last_user, after_tool = cues_from_items(items)
        text = body.get("text") or {}
        answer = plan(responses_functions(body), body.get("tool_choice"), text.get("format"), last_user, after_tool,
                      state.profile.default_output_tokens)
        n, capped = answer.size(cap, capped)
        wait = state.limiter.admit(time.monotonic(), input_tokens + (cap if capped else n))
        if wait:
            stats.rate_limited += 1
            await _error(send, 429, f"Rate limit reached for {model}: please try again in {wait:.3f}s.",
                         "rate_limit_exceeded", {"retry-after": f"{wait:.3f}"})
            return None
        stats.input_tokens += input_tokens
        row[1] += input_tokens
        turn = Turn(rid=rid, model=model, created=int(time.time()), n=n, input_tokens=input_tokens, capped=capped,
                    pieces=answer.pieces, call=answer.call)
        renderer = ResponsesRenderer(turn, response_fields(body))
        drop = mode == "drop_mid_stream"
        sent, gone = await self._stream(client, send, renderer, n // 2 if drop else n, continued)
        stats.output_tokens += sent
        row[2] += sent
        if gone:
            stats.disconnects += 1
            return None
        if drop:
            _drop(f"simulated drop after {sent} of {n} tokens")
        for frame in sse_frames(renderer.epilogue()):
            await send({"type": "websocket.send", "text": frame.decode()})
        return renderer

    async def _stream(self, client: _Client, send: Send, r: ResponsesRenderer, limit: int,
                      continued: bool) -> tuple[int, bool]:
        """Prelude and tokens 0..limit-1 paced by the profile (a continued turn waits its shorter
        first-token time); returns (tokens sent, client gone)."""
        profile = self.state.profile
        for frame in sse_frames(r.prelude()):
            await send({"type": "websocket.send", "text": frame.decode()})
        delay = profile.first_token_s(continued)
        if delay > 0 and not await client.pause(delay):
            return 0, True
        tps = profile.tokens_per_s
        loop = asyncio.get_running_loop()
        start = loop.time()
        i = 0
        while i < limit:
            due = limit if tps <= 0 else min(limit, int((loop.time() - start) * tps) + 1)
            for k in range(i, due):
                frame = r.token(k)
                await send({"type": "websocket.send", "text": frame[frame.index(b"data: ") + 6 : -2].decode()})
            i = due
            if i < limit and not await client.pause(max(start + i / tps - loop.time(), profile.batch_ms / 1000)):
                return i, True
        return i, False


def _drop(reason: str) -> None:
    """Cut the socket abruptly: uvicorn closes the transport when the app raises (quietly, for SimulatedDrop)."""
    raise SimulatedDrop(reason)


async def _deny(send: Send, status: int, message: str) -> None:
    body = orjson.dumps({"error": {"message": message, "type": _ERROR_TYPES.get(status, "server_error"),
                                   "param": None, "code": None}})
    await send({"type": "websocket.http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "websocket.http.response.body", "body": body})


async def _error(send: Send, status: int, message: str, code: str | None, headers: dict[str, str] | None = None,
                 param: str | None = None) -> None:
    event: dict[str, Any] = {"type": "error", "status": status, "error": {
        "type": _ERROR_TYPES.get(status, "server_error"), "code": code, "message": message, "param": param}}
    if headers:
        event["headers"] = headers
    await send({"type": "websocket.send", "text": orjson.dumps(event).decode()})
