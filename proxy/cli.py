"""The ``laneway`` command: serve a policy, check a policy, hash a key."""
from __future__ import annotations

import argparse
import getpass
import logging
import os
import signal
import sys
from collections.abc import Sequence

from proxy.config import PolicyError, hash_key, load_policy


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="laneway", description="Rate-limit- and cost-aware routing proxy for LLM APIs.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--policy", required=True, help="policy YAML file")
    serve.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("PORT", "4000")))
    serve.add_argument("--workers", type=int, default=int(os.environ.get("LANEWAY_WORKERS", "1")))
    serve.add_argument("--log-level", default=os.environ.get("LANEWAY_LOG_LEVEL", "info"))
    serve.add_argument("--no-simulators", action="store_true", help="do not start the policy's simulated providers")

    check = commands.add_parser("check", help="validate a policy file; print every error with its line and field")
    check.add_argument("policy")

    hk = commands.add_parser("hash-key", help="print the sha256 to put in a policy's keys section")
    hk.add_argument("key", nargs="?", help="the key (read from a prompt when omitted, so it stays out of shell history)")

    from proxy import cli_cost

    cli_cost.add_commands(commands)

    args = parser.parse_args(argv)
    if args.command == "cost":
        return cli_cost.run(args)
    if args.command == "check":
        return _check(args.policy)
    if args.command == "hash-key":
        print(hash_key(args.key or getpass.getpass("key: ")))
        return 0
    return _serve(args)


def _check(path: str) -> int:
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        print(f"{path}: {len(exc.errors)} error(s); fix them and run 'laneway check {path}' again", file=sys.stderr)
        return 1
    for warning in policy.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{path}: ok (version {policy.version}: {len(policy.deployments)} deployments, {len(policy.routes)} routes)")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from proxy.api.app import POLICY_ENV
    from proxy.api.ws_server import UVICORN_WS
    from proxy.metrics.workers import multiprocess_dir
    from proxy.simulate.supervisor import Simulators

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 2
    for warning in policy.warnings:
        logging.getLogger("laneway").warning("%s", warning)
    os.environ[POLICY_ENV] = os.path.abspath(args.policy)
    simulators = Simulators(() if args.no_simulators else policy.simulators)
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; turning them into a clean
    # exit lets the finally below stop the simulators and the process report success.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_cleanly)
    try:
        simulators.start()
        with multiprocess_dir(args.workers):  # /metrics adds up every worker's samples
            uvicorn.run(
                "proxy.api.app:create_app",
                factory=True,
                host=args.host,
                port=args.port,
                workers=args.workers,
                loop="uvloop",
                http="httptools",
                ws=UVICORN_WS,
                log_level=args.log_level.lower(),
                access_log=False,
                timeout_graceful_shutdown=30,
                timeout_keep_alive=75,
            )
    finally:
        simulators.stop()
    return 0


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    raise SystemExit(main())
