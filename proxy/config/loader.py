"""Policy file (YAML) -> ``Policy``: the only module that knows the file format.

The tables below are the whole file schema. To add a setting, add a ``Field`` to
its section (and a matching attribute to the dataclass in ``schema.py``); to add
a section, add a ``Spec`` and a ``Field`` for it in ``POLICY``. Rules that span
several fields (names that must be unique, routes pointing at deployments) live
in ``_cross_check``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import yaml

from .errors import FieldError, PolicyError
from .fields import (
    Context,
    Field,
    Invalid,
    Record,
    Spec,
    env_name,
    headers,
    http_url,
    list_of,
    one_of,
    port,
    positive_float,
    positive_int,
    read,
    record,
    secret_reference,
    section,
    sha256_hex,
    suggest,
    text,
)
from .schema import (
    AUTH_MODES,
    PROVIDERS,
    SIMULATOR_DIALECTS,
    SIMULATOR_PROFILES,
    STRATEGIES,
    ApiKey,
    Deployment,
    Policy,
    Route,
    ServerSettings,
    Simulator,
    Timeouts,
)

FORMAT_VERSION = 1


def _format_version(ctx: Context, node: yaml.Node, path: str) -> int:
    value = positive_int(ctx, node, path)
    if value != FORMAT_VERSION:
        raise Invalid(f"unsupported policy format version {value}; this Laneway reads `version: {FORMAT_VERSION}`")
    return value


TIMEOUTS = Spec(
    {
        "connect_s": Field(positive_float),
        "first_byte_s": Field(positive_float),
        "idle_s": Field(positive_float),
        "total_s": Field(positive_float),
    },
    Timeouts,
)

DEPLOYMENT = Spec(
    {
        "name": Field(text, required=True),
        "provider": Field(one_of(PROVIDERS, "provider"), required=True),
        "model": Field(text, required=True),
        "base_url": Field(http_url, required=True),
        "hardware": Field(text),
        "api_key": Field(secret_reference, attr="api_key_env"),
        "api_key_env": Field(env_name),
        "timeouts": Field(section(TIMEOUTS)),
        "headers": Field(headers),
    },
    Deployment,
)

ROUTE = Spec(
    {
        "name": Field(text, required=True),
        "candidates": Field(list_of(text, empty="must list at least one deployment"), required=True),
        "strategy": Field(one_of(STRATEGIES, "strategy")),
    },
    Route,
)

API_KEY = Spec(
    {
        "name": Field(text, required=True),
        "sha256": Field(sha256_hex, required=True),
        "team": Field(text),
    },
    ApiKey,
)

SIMULATOR = Spec(
    {
        "name": Field(text, required=True),
        "profile": Field(one_of(SIMULATOR_PROFILES, "simulator profile"), required=True),
        "port": Field(port, required=True),
        "host": Field(text),
        "rpm": Field(positive_int),
        "tpm": Field(positive_int),
        "rpd": Field(positive_int),
        "dialect": Field(one_of(SIMULATOR_DIALECTS, "simulator dialect")),
    },
    Simulator,
)

SERVER = Spec({"max_body_bytes": Field(positive_int)}, ServerSettings)

POLICY = Spec(
    {
        "version": Field(_format_version, required=True),
        "server": Field(section(SERVER)),
        "auth": Field(one_of(AUTH_MODES, "auth mode"), required=True),
        "keys": Field(list_of(record(API_KEY))),
        "deployments": Field(list_of(record(DEPLOYMENT), empty="must list at least one deployment"), required=True),
        "routes": Field(list_of(record(ROUTE))),
        "simulators": Field(list_of(record(SIMULATOR))),
    }
)


def load_policy(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Policy:
    """Read and validate a policy file; raises PolicyError listing every problem found."""
    source = os.fspath(path)
    try:
        data = Path(source).read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise PolicyError([FieldError(source, 0, "", f"cannot read policy file: {reason}; check the path")]) from None
    try:
        text_ = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PolicyError([FieldError(source, line, "", "the file is not UTF-8 text; re-save it as UTF-8")]) from None
    return _parse(text_, data, source, env)


def parse_policy(text: str, source: str = "<string>", env: Mapping[str, str] | None = None) -> Policy:
    """Validate policy YAML given as a string (``version`` hashes its UTF-8 encoding)."""
    return _parse(text, text.encode(), source, env)


def _parse(text_: str, data: bytes, source: str, env: Mapping[str, str] | None) -> Policy:
    ctx = Context(source, os.environ if env is None else env)
    root = _compose(text_, source)
    top = read(ctx, root, "", POLICY)
    _cross_check(ctx, top)
    if ctx.errors:
        raise PolicyError(sorted(ctx.errors, key=lambda e: e.line))
    deployments = {d.name: d for d in (_build_deployment(ctx, r) for r in top.values["deployments"])}
    return Policy(
        source=source,
        version=hashlib.sha256(data).hexdigest()[:12],
        server=top.values.get("server", ServerSettings()),
        auth=top.values["auth"],
        keys=tuple(r.build() for r in top.values.get("keys", ())),
        deployments=MappingProxyType(deployments),
        routes=MappingProxyType({r.values["name"]: r.build() for r in top.values.get("routes", ())}),
        simulators=tuple(r.build() for r in top.values.get("simulators", ())),
        warnings=tuple(sorted(ctx.warnings, key=lambda e: e.line)),
    )


def _compose(text_: str, source: str) -> yaml.Node:
    """YAML text -> node tree (nodes keep line numbers; plain values are never needed)."""
    try:
        root = yaml.compose(text_, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        # Built from problem/context only: the default str() quotes the offending line, which may hold a secret.
        mark = exc.problem_mark or exc.context_mark
        message = "; ".join(part for part in (exc.problem, exc.context) if part)
        line = mark.line + 1 if mark else 0
        if "${" in "".join(text_.splitlines()[line - 1 : line]):
            message += ' (inside {...} or [...], quote values that use ${VAR}: "${VAR}")'
        raise PolicyError([FieldError(source, line, "", f"YAML syntax error: {message}")]) from None
    except yaml.reader.ReaderError as exc:
        line = text_[: exc.position].count("\n") + 1
        message = f"YAML cannot contain character #x{exc.character:04x}; remove it"
        raise PolicyError([FieldError(source, line, "", message)]) from None
    if root is None:
        message = "the policy is empty; start from policies/example-production.yaml"
        raise PolicyError([FieldError(source, 1, "", message)])
    return root


def _cross_check(ctx: Context, top: Record) -> None:
    """Rules spanning several entries. Entries with their own errors still take part, so a
    typo inside a deployment does not also turn every route using it into an 'unknown' error."""
    keys = top.values.get("keys", ())
    deployments = top.values.get("deployments", ())
    routes = top.values.get("routes", ())
    simulators = top.values.get("simulators", ())
    _unique(ctx, keys, "name", "key name")
    _unique(ctx, keys, "sha256", "key hash")
    _unique(ctx, deployments, "name", "deployment name")
    _unique(ctx, routes, "name", "route name")
    _unique(ctx, simulators, "name", "simulator name")
    _unique(ctx, simulators, "port", "simulator port")
    deployment_names = {r.values["name"] for r in deployments if "name" in r.values}
    for route in routes:
        _check_route(ctx, route, deployment_names)
    auth = top.values.get("auth")
    if auth == "keys" and not keys:
        line, path = top.where("auth")
        message = "is 'keys' but no keys are listed; add entries under `keys:` or use `auth: open` for a demo"
        ctx.error(line, path, message)
    if auth == "open" and keys:
        line, path = top.where("keys")
        ctx.warn(line, path, "are ignored because `auth: open` lets every request in; set `auth: keys` to enforce them")


def _unique(ctx: Context, records: Sequence[Record], attr: str, what: str) -> None:
    first: dict[object, int] = {}
    for rec in records:
        if attr not in rec.values:
            continue
        value = rec.values[attr]
        line, path = rec.where(attr)
        if value in first:
            ctx.error(line, path, f"duplicate {what} {value!r}; first defined on line {first[value]}")
        else:
            first[value] = line


def _check_route(ctx: Context, route: Record, deployments: Collection[str]) -> None:
    name = route.values.get("name")
    if name in deployments:
        line, path = route.where("name")
        message = f"route {name!r} has the same name as a deployment; clients pick either by `model`, so rename one"
        ctx.error(line, path, message)
    if "candidates" not in route.values:
        return
    nodes = route.sources["candidates"][1].value
    _, base = route.where("candidates")
    seen: set[str] = set()
    for index, (candidate, node) in enumerate(zip(route.values["candidates"], nodes)):
        line, path = node.start_mark.line + 1, f"{base}[{index}]"
        if candidate not in deployments:
            ctx.error(line, path, f"unknown deployment {candidate!r}{suggest(candidate, deployments)}")
        elif candidate in seen:
            ctx.error(line, path, f"deployment {candidate!r} is listed twice in this route")
        seen.add(candidate)


def _build_deployment(ctx: Context, rec: Record) -> Deployment:
    """Resolve the API key now; an unset variable is only a warning because the upstream's 401 says it best."""
    var = rec.values.get("api_key_env")
    api_key = (ctx.env.get(var) or None) if var else None
    if var and api_key is None:
        line, path = rec.where("api_key_env")
        ctx.warn(line, path, f"environment variable {var} is not set; requests to {rec.values['name']!r} "
                 "will be sent without a key (set it and reload)")
    return rec.build(api_key=api_key)
