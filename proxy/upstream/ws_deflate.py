"""permessage-deflate (RFC 7692) for upstream sockets: the offer, the provider's answer, and
each message compressed or inflated with zlib.

Why: WebSocket mode resends a turn's instructions and tools every turn (28.6 KB of each turn in
bench/websocket_wan.py's agent conversation). With context takeover the compressor's window
still holds the last turn, so the repeat costs a few back-references on the wire.
"""
from __future__ import annotations

import zlib

from proxy.call import UpstreamError

# client_max_window_bits without a value: the provider may ask for a smaller window for our messages
OFFER = "permessage-deflate; client_max_window_bits"
_TAIL = b"\x00\x00\xff\xff"  # what a sync flush ends with; the sender strips it, the receiver appends it
# level 4, the cheapest that matches lazily: on bench/websocket.py's turns it reaches back into the
# last turn nearly as well as level 6 at about a quarter of its CPU; level 1 finds few of those
# long repeats (docs/websocket.md, "Compression")
_LEVEL, _MEM_LEVEL = 4, 8


class InflateError(UpstreamError):
    """A compressed message the provider sent is corrupt or inflates past the message size limit."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Deflate:
    """The negotiated compression state of one connection (each direction has its own window)."""

    __slots__ = ("_client_bits", "_client_reset", "_compressor", "_inflater", "_server_reset")

    def __init__(self, server_no_context_takeover: bool = False, client_no_context_takeover: bool = False,
                 client_max_window_bits: int = 15) -> None:
        self._server_reset = server_no_context_takeover
        self._client_reset = client_no_context_takeover
        # zlib silently widens a raw-deflate window of 8 bits to 9, which a server limited to 8
        # could not inflate: such a server gets our messages uncompressed (allowed per message)
        self._client_bits = client_max_window_bits if client_max_window_bits > 8 else 0
        self._inflater = zlib.decompressobj(-15)  # a 15-bit window inflates any smaller one too
        self._compressor = self._new_compressor() if self._client_bits else None

    def _new_compressor(self) -> zlib._Compress:
        return zlib.compressobj(_LEVEL, zlib.DEFLATED, -self._client_bits, _MEM_LEVEL)

    def deflate(self, payload: bytes) -> bytes | None:
        """``payload`` compressed as one message, or None: send it plain."""
        if self._compressor is None:
            return None
        data = self._compressor.compress(payload) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
        if self._client_reset:
            self._compressor = self._new_compressor()
        return data[:-4] if data.endswith(_TAIL) else data

    def inflate(self, fragment: bytes, last: bool, room: int) -> bytes:
        """One frame of a compressed message inflated; ``room``: inflated bytes the message may still
        take. Stops inflating one byte past it, so a bomb costs no more memory than the limit."""
        inflater = self._inflater
        try:
            out = inflater.decompress(fragment, room + 1)
            if last and len(out) <= room:
                out += inflater.decompress(_TAIL, room + 1 - len(out))
        except zlib.error as exc:
            raise InflateError(f"upstream socket sent a corrupt compressed message ({exc})", 1007) from None
        if len(out) > room:
            raise InflateError("too big", 1009)
        if last and (self._server_reset or inflater.eof):  # eof: the provider ended its stream (BFINAL)
            self._inflater = zlib.decompressobj(-15)
        return out


def accept(value: str) -> Deflate:
    """The provider's Sec-WebSocket-Extensions answer to OFFER, checked as RFC 7692 7.1 says a
    client must; raises ValueError (why it cannot be accepted) for anything else."""
    extensions = [e for e in value.split(",") if e.strip()]
    if len(extensions) != 1:
        raise ValueError(f"{len(extensions)} extensions answer one offer")
    name, *params = (p.strip() for p in extensions[0].split(";"))
    if name.lower() != "permessage-deflate":
        raise ValueError(f"extension {name!r} was not offered")
    seen: dict[str, str | None] = {}
    for param in params:
        key, eq, raw = param.partition("=")
        key = key.strip().lower()
        if key in seen:
            raise ValueError(f"permessage-deflate parameter {key} twice")
        seen[key] = raw.strip().strip('"') if eq else None
    flags = {}
    for key in ("server_no_context_takeover", "client_no_context_takeover"):
        flags[key] = key in seen
        if flags[key] and seen.pop(key) is not None:
            raise ValueError(f"permessage-deflate parameter {key} takes no value")
    bits = {}
    for key in ("server_max_window_bits", "client_max_window_bits"):
        if key in seen:
            raw = seen.pop(key)
            if raw is None or not raw.isdigit() or not 8 <= int(raw) <= 15:
                raise ValueError(f"permessage-deflate {key}={raw} is not 8..15")
            bits[key] = int(raw)
    if seen:
        raise ValueError(f"permessage-deflate parameter {next(iter(seen))} is unknown")
    return Deflate(flags["server_no_context_takeover"], flags["client_no_context_takeover"],
                   bits.get("client_max_window_bits", 15))
