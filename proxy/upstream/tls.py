"""The TLS trust an upstream connection uses: the system store, or a deployment's own CA bundle.

Private endpoints (an in-house vLLM, a provider behind a corporate gateway) are often signed by
an internal CA. ``ca_file`` trusts that bundle for one deployment only, instead of widening every
connection's trust through ``SSL_CERT_FILE``. Contexts are costly to build (the system store is
parsed each time), so one is shared by every pool that trusts the same file as it is now; a
rewritten file (a rotated CA) gets a new context at the next policy load. The system store is read
afresh for each pool, so ``SSL_CERT_FILE`` keeps its usual meaning.
"""
from __future__ import annotations

import os
import ssl
from functools import lru_cache


def client_context(ca_file: str | None) -> ssl.SSLContext:
    """A verifying client context trusting ``ca_file`` alone, or the system store when None.

    Raises OSError (unreadable file) or ssl.SSLError (no certificate in it).
    """
    if ca_file is None:
        return ssl.create_default_context()
    st = os.stat(ca_file)
    return _context(ca_file, st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=64)
def _context(ca_file: str, mtime_ns: int, size: int) -> ssl.SSLContext:
    """``mtime_ns`` and ``size`` only key the cache: the file as it is now."""
    return ssl.create_default_context(cafile=ca_file)
