"""A throwaway certificate authority, so the simulator can serve HTTPS and wss like a provider.

Benchmarks across an emulated WAN (bench/websocket_wan.py) must pay what a real provider
costs: a TLS handshake per connection and TLS records on every byte. The CA and the server
certificate (for 127.0.0.1) are made at run time by the ``openssl`` CLI — no dependency for a
benchmark's sake, nothing private in the repository — and clients trust them the way Laneway
trusts any upstream: Python's default SSL context, which reads ``SSL_CERT_FILE``.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_LEAF = ("subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
         "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA clients trust, the server's certificate and its key."""

    ca: Path
    cert: Path
    key: Path


def make_ca(folder: Path, days: int = 1) -> TlsFiles:
    """Write a fresh CA and a certificate for 127.0.0.1 it signed into ``folder``."""
    ca, ca_key, cert, key = (folder / n for n in ("ca.pem", "ca.key", "cert.pem", "key.pem"))
    csr, ext = folder / "cert.csr", folder / "cert.ext"
    ext.write_text(_LEAF)
    for cmd in (
        ["req", "-x509", *_KEY, "-days", days, "-subj", "/CN=laneway simulator CA", "-keyout", ca_key, "-out", ca,
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"],
        ["req", *_KEY, "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", csr],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", days,
         "-extfile", ext, "-out", cert],
    ):
        subprocess.run(["openssl", *map(str, cmd)], check=True, capture_output=True)
    return TlsFiles(ca, cert, key)
