"""CLI: python -m proxy.simulate --profile wafer --port 4101 [...]"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

from .profiles import DIALECTS, PROFILES, get_profile
from .server import serve_forever
from .tls import make_ca


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m proxy.simulate", description="Serve a simulated LLM provider.")
    p.add_argument("--profile", default="wafer", choices=sorted(PROFILES))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4101)
    p.add_argument("--rpm", type=int)
    p.add_argument("--tpm", type=int)
    p.add_argument("--rpd", type=int)
    p.add_argument("--dialect", choices=DIALECTS)
    p.add_argument("--ttft-ms", type=float)
    p.add_argument("--tokens-per-s", type=float)
    p.add_argument("--batch-ms", type=float, help="least pause between paced writes (default 10; 0: a write per token)")
    p.add_argument("--default-output-tokens", type=int)
    p.add_argument("--request-overhead-ms", type=float, help="provider work per fresh request before prefill")
    p.add_argument("--continued-overhead-share", type=float,
                   help="share of that overhead a continued WebSocket turn pays (published claim: 0.2)")
    p.add_argument("--continued-ttft-share", type=float,
                   help="share of the TTFT a continued WebSocket turn waits (published claim: 0.5)")
    p.add_argument("--tls-dir", type=Path,
                   help="serve HTTPS / wss with a throwaway CA made in this folder (clients trust DIR/ca.pem)")
    p.add_argument("--keep-alive-s", type=int, default=5,
                   help="close idle HTTP connections after this long (uvicorn's 5 s; providers' edges keep minutes)")
    p.add_argument("--no-provider-headers", dest="provider_headers", action="store_false", default=None,
                   help="send no x-ratelimit-*, x-request-id or openai-processing-ms (a self-hosted server)")
    p.add_argument("--model", action="append", default=[], help="extra model id for GET /v1/models (repeatable)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        profile = get_profile(
            args.profile, rpm=args.rpm, tpm=args.tpm, rpd=args.rpd, dialect=args.dialect, ttft_ms=args.ttft_ms,
            tokens_per_s=args.tokens_per_s, batch_ms=args.batch_ms, default_output_tokens=args.default_output_tokens,
            models=tuple(args.model) or None, provider_headers=args.provider_headers, request_overhead_ms=args.request_overhead_ms,
            continued_overhead_share=args.continued_overhead_share, continued_ttft_share=args.continued_ttft_share,
        )
        if args.keep_alive_s < 0:
            raise ValueError("--keep-alive-s must be >= 0")
        tls = None if args.tls_dir is None else make_ca(args.tls_dir)
    except ValueError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"simulate: cannot make a CA in {args.tls_dir}: {exc}", file=sys.stderr)
        return 2
    # uvicorn re-raises the captured signal after its graceful shutdown; make that a clean exit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        serve_forever(profile, args.host, args.port, tls, args.keep_alive_s)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
