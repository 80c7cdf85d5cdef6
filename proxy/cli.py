"""The ``laneway`` command: serve a policy, check a policy, hash a key."""
from __future__ import annotations

import argparse
import getpass
import logging
import logging.config
import os
import signal
import sys
from collections.abc import Sequence
from importlib.metadata import version
from urllib.parse import urlsplit

from proxy.config import Policy, PolicyError, hash_key, load_policy
from proxy.api.log_format import FORMAT_ENV, FORMATS, log_config

POLICY_ENV = "LANEWAY_POLICY"  # the policy file, for every command that reads one
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
log = logging.getLogger("laneway")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="laneway", description="Rate-limit- and cost-aware routing proxy for LLM APIs.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('laneway')}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy")
    _option(serve, "--policy", POLICY_ENV, None, "policy YAML file")
    _option(serve, "--host", "HOST", "127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    _option(serve, "--port", "PORT", "4000", "TCP port to listen on", type=int)
    _option(serve, "--workers", "LANEWAY_WORKERS", "1", "worker processes (each serves requests; /metrics adds them up)", type=int)
    _option(serve, "--log-level", "LANEWAY_LOG_LEVEL", "info", "least severe log lines printed (info includes the access log)",
            choices=LOG_LEVELS, type=str.lower)
    _option(serve, "--log-format", FORMAT_ENV, "text", "log line format: text for people, json for log shippers", choices=FORMATS)
    serve.add_argument("--no-simulators", action="store_true", help="do not start the policy's simulated providers")

    check = commands.add_parser("check", help="validate a policy file; print every error with its line and field")
    check.add_argument("policy", nargs="?", default=os.environ.get(POLICY_ENV),
                       help=f"policy YAML file [env {POLICY_ENV}]")

    hk = commands.add_parser("hash-key", help="print the sha256 to put in a policy's keys section")
    hk.add_argument("key", nargs="?", help="the key (read from a prompt when omitted, so it stays out of shell history)")

    from proxy import cli_cost

    cli_cost.add_commands(commands)

    args = parser.parse_args(argv)
    if args.command == "serve":
        # argparse checks choices on the command line only, not on defaults taken from the environment
        for flag, value, allowed in (("--log-level", args.log_level, LOG_LEVELS), ("--log-format", args.log_format, FORMATS)):
            if value not in allowed:
                parser.error(f"serve {flag}: {value!r} is not one of {', '.join(allowed)}")
    if args.command == "cost":
        return cli_cost.run(args)
    if args.command == "check":
        if not args.policy:
            parser.error(f"check: name a policy file, or set {POLICY_ENV}")
        return _check(args.policy)
    if args.command == "hash-key":
        print(hash_key(args.key or getpass.getpass("key: ")))
        return 0
    if not args.policy:
        parser.error(f"serve: name a policy file with --policy FILE, or set {POLICY_ENV}")
    return _serve(args)


def _option(parser: argparse.ArgumentParser, flag: str, env: str, default: str | None, help: str, **kwargs: object) -> None:
    """An option whose default comes from ``env``; the help names both (argparse converts a str default with ``type``)."""
    shown = f"env {env}" if default is None else f"env {env}, default {default}"
    parser.add_argument(flag, default=os.environ.get(env) or default, help=f"{help} [{shown}]", **kwargs)


def _check(path: str) -> int:
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        if any(error.line for error in exc.errors):  # not for a file that could not be read at all
            print(f"{path}: {len(exc.errors)} error(s); fix them and run 'laneway check {path}' again", file=sys.stderr)
        return 1
    for warning in policy.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{path}: ok (version {policy.version}: {len(policy.deployments)} deployments, {len(policy.routes)} routes)")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from proxy.api.app import POLICY_ENV as WORKER_POLICY_ENV
    from proxy.api.http_server import http_protocol
    from proxy.api.log_redaction import redacting
    from proxy.api.ws_server import UVICORN_WS
    from proxy.metrics.workers import multiprocess_dir
    from proxy.simulate.supervisor import Simulators

    # The same dict configures this process and, through uvicorn, every worker it spawns.
    logging_config = redacting(log_config(args.log_level, args.log_format))  # no key in any log line
    logging.config.dictConfig(logging_config)
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 2
    for warning in policy.warnings:
        log.warning("%s", warning)
    os.environ[WORKER_POLICY_ENV] = os.path.abspath(args.policy)
    simulators = Simulators(() if args.no_simulators else policy.simulators)
    _log_startup(policy, args)
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
                http=http_protocol(policy.server),
                ws=UVICORN_WS,
                log_config=logging_config,
                log_level=args.log_level,
                access_log=False,  # Laneway's own access log (proxy.api.access_log) replaces uvicorn's
                timeout_graceful_shutdown=30,
                timeout_keep_alive=policy.server.keep_alive_s,
            )
    finally:
        simulators.stop()
    return 0


def _log_startup(policy: Policy, args: argparse.Namespace) -> None:
    """What an operator checks first: which policy, who may call, where limits live, what runs."""
    log.info("laneway %s serving %s (policy version %s: %d deployments, %d routes) on http://%s:%d",
             version("laneway"), os.path.abspath(policy.source), policy.version, len(policy.deployments),
             len(policy.routes), args.host, args.port)
    log.info("auth: %s", f"keys ({len(policy.keys)} keys)" if policy.auth == "keys" else "open (every request is let in)")
    store = policy.store
    if store.redis_url:
        log.info("store: %s %s (on_store_error %s, replicas %d)", store.topology, without_password(store.redis_url),
                 store.on_store_error, store.replicas)
    else:
        log.info("store: embedded (in this process: limits and budgets are not shared with other replicas)")
    log.info("workers: %d, log format %s", args.workers, args.log_format)
    if args.no_simulators or not policy.simulators:
        log.info("simulators: %s", "off (--no-simulators)" if policy.simulators else "none")
    else:
        log.info("simulators: %s", ", ".join(f"{s.name} ({s.profile}) on {s.host}:{s.port}" for s in policy.simulators))


def without_password(url: str) -> str:
    """``url`` with the password of its userinfo replaced by ``***``, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    raise SystemExit(main())
