"""Policy file (YAML) -> ``Policy``: the only module that knows the file format.

The tables below are the whole file schema. To add a setting, add a ``Field`` to
its section (and a matching attribute to the dataclass in ``schema.py``); to add
a section, add a ``Spec`` and a ``Field`` for it in ``POLICY``. Rules that span
several fields (names that must be unique, routes pointing at deployments) live
in ``_cross_check``.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import yaml

from .errors import FieldError, PolicyError
from .fields import (
    Context,
    Converter,
    Field,
    Invalid,
    Record,
    Spec,
    boolean,
    ca_file,
    env_name,
    headers,
    http_url,
    is_null,
    kind,
    list_of,
    mapping_of,
    one_of,
    port,
    positive_float,
    positive_int,
    positive_int_or_env,
    read,
    record,
    redis_url,
    secret_reference,
    section,
    sha256_hex,
    suggest,
    text,
)
from .pricing_specs import LEDGER, budget, prices, team_budgets
from .schema import (
    AUTH_MODES,
    MODALITIES,
    OPENAI_COMPATIBLE,
    PROVIDERS,
    SIMULATOR_DIALECTS,
    SIMULATOR_PROFILES,
    STORE_ERROR_MODES,
    STORE_TOPOLOGIES,
    STRATEGIES,
    WEBSOCKET_COMPRESSIONS,
    ApiKey,
    BreakerSettings,
    Deployment,
    Hedge,
    Learning,
    LeaseSettings,
    LedgerSettings,
    Limits,
    Policy,
    Priors,
    Route,
    ServerSettings,
    Simulator,
    Slo,
    Spill,
    StoreSettings,
    Timeouts,
    WebSocketSettings,
)

FORMAT_VERSION = 1
# Deeper than any real policy, far below the interpreter's recursion limit (the composer recurses per level).
MAX_NESTING = 64


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

def _count(ctx: Context, node: yaml.Node, path: str) -> int:
    """A whole number >= 0 (0 turns a spill threshold off)."""
    if is_null(node) or not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:int":
        raise Invalid(f"expected a whole number (0 or more), got {kind(node)}")
    value = int(node.value.replace("_", ""))
    if value < 0:
        raise Invalid(f"must be 0 or more, got {value}")
    return value


def _non_negative(ctx: Context, node: yaml.Node, path: str) -> float:
    """A finite number >= 0."""
    numeric = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    if not isinstance(node, yaml.ScalarNode) or node.tag not in numeric:
        raise Invalid(f"expected a number, got {kind(node)}")
    try:
        value = float(node.value.replace("_", ""))
    except ValueError:
        value = math.nan
    if not (value >= 0 and math.isfinite(value)):
        raise Invalid(f"must be a finite number, 0 or more, got {node.value}")
    return value


def _fraction(ctx: Context, node: yaml.Node, path: str) -> float:
    value = _non_negative(ctx, node, path)
    if value >= 1:
        raise Invalid(f"must be a share between 0 and 1 (e.g. 0.3 for 30%), got {value:g}")
    return value


def _percentile(ctx: Context, node: yaml.Node, path: str) -> float:
    value = positive_float(ctx, node, path)
    if value >= 100:
        raise Invalid(f"must be a percentile between 0 and 100 (e.g. 95), got {value:g}")
    return value


# deployment name -> relative share of traffic (names are checked against the candidates later)
_weights = mapping_of(_non_negative, "deployment: weight", null_is_empty=False)


PRIORS = Spec(
    {"ttft_ms": Field(positive_float), "tokens_per_s": Field(positive_float), "concurrency": Field(positive_int)},
    Priors,
)
LEARNING = Spec({"half_life_s": Field(positive_float), "probe_interval_s": Field(_non_negative),
                 "idle_probe_s": Field(_non_negative)}, Learning)
BREAKER = Spec(
    {"failures": Field(positive_int), "cooldown_s": Field(positive_float), "half_open_probes": Field(positive_int)},
    BreakerSettings,
)
SLO = Spec(
    {
        "ttft_ms": Field(positive_float),
        "tokens_per_s": Field(positive_float),
        "total_ms": Field(positive_float),
        "percentile": Field(_percentile),
    },
    Slo,
)
HEDGE = Spec({"after_ms": Field(positive_float, required=True)}, Hedge)
SPILL = Spec(
    {
        "min_requests": Field(_count),
        "min_tokens": Field(_count),
        "reserve_fraction": Field(_fraction),
        "reserve_min_gain_ms": Field(_non_negative),
        "reserve_pace": Field(boolean),
        "reserve_sized": Field(boolean),
    },
    Spill,
)

LIMITS = Spec(
    {
        "rpm": Field(positive_int),
        "tpm": Field(positive_int),
        "rpd": Field(positive_int),
        "tpd": Field(positive_int),
        "concurrency": Field(positive_int),
        "reserve_output_tokens": Field(positive_int),
    },
    Limits,
)


def _at_most(convert: Converter, most: float, unit: str) -> Converter:
    """``convert``, then refuse values above ``most``."""

    def check(ctx: Context, node: yaml.Node, path: str) -> float:
        value = convert(ctx, node, path)
        if value > most:
            raise Invalid(f"must be at most {most:g}{unit}, got {value:g}")
        return value

    return check


LEASES = Spec(
    {
        "requests": Field(_at_most(positive_int, 1000, " requests per lease")),
        # window logs keep a second of expiry slack for entries stamped at a lease's end
        "duration_ms": Field(_at_most(positive_int, 1000, " ms")),
        "share": Field(_at_most(positive_float, 1, " (the share of each limit one lease may take, e.g. 0.1)")),
    },
    LeaseSettings,
)

STORE = Spec(
    {
        "redis_url": Field(redis_url),
        "topology": Field(one_of(STORE_TOPOLOGIES, "store topology")),
        "on_store_error": Field(one_of(STORE_ERROR_MODES, "on_store_error mode")),
        "replicas": Field(positive_int_or_env),
        "timeout_ms": Field(positive_int),
        "lease_s": Field(positive_float),
        "max_connections": Field(positive_int),
        "leases": Field(section(LEASES)),
        "sqlite_path": Field(text),
    },
    StoreSettings,
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
        "ca_file": Field(ca_file),
        "priors": Field(section(PRIORS)),
        "learning": Field(section(LEARNING)),
        "breaker": Field(section(BREAKER)),
        "context_window": Field(positive_int),
        "modalities": Field(list_of(one_of(MODALITIES, "modality"), empty="must list at least one modality")),
        "reasoning": Field(boolean),
        "websocket": Field(boolean),
        "websocket_max_connections": Field(positive_int),
        "websocket_compression": Field(one_of(WEBSOCKET_COMPRESSIONS, "websocket compression")),
        "limits": Field(section(LIMITS)),
    },
    Deployment,
)

ROUTE = Spec(
    {
        "name": Field(text, required=True),
        "candidates": Field(list_of(text, empty="must list at least one deployment"), required=True),
        "strategy": Field(one_of(STRATEGIES, "strategy")),
        "slo": Field(section(SLO)),
        "weights": Field(_weights),
        "hedge": Field(section(HEDGE)),
        "spill": Field(section(SPILL)),
    },
    Route,
)

API_KEY = Spec(
    {
        "name": Field(text, required=True),
        "sha256": Field(sha256_hex, required=True),
        "team": Field(text),
        "admin": Field(boolean),
        "budget": Field(budget),
        "limits": Field(section(LIMITS)),
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

WEBSOCKET = Spec(
    {
        "enabled": Field(boolean),
        "max_connection_minutes": Field(positive_float),
        "idle_timeout_s": Field(positive_float),
    },
    WebSocketSettings,
)

SERVER = Spec(
    {
        "max_body_bytes": Field(positive_int),
        "websocket": Field(section(WEBSOCKET)),
        "header_timeout_s": Field(positive_float),
        "body_timeout_s": Field(positive_float),
        "keep_alive_s": Field(positive_float),
        "max_connections": Field(positive_int),
        "max_header_bytes": Field(positive_int),
        "stream_batch_ms": Field(_non_negative),
    },
    ServerSettings,
)

POLICY = Spec(
    {
        "version": Field(_format_version, required=True),
        "server": Field(section(SERVER)),
        "auth": Field(one_of(AUTH_MODES, "auth mode"), required=True),
        "keys": Field(list_of(record(API_KEY))),
        "deployments": Field(list_of(record(DEPLOYMENT), empty="must list at least one deployment"), required=True),
        "routes": Field(list_of(record(ROUTE))),
        "simulators": Field(list_of(record(SIMULATOR))),
        "prices": Field(prices),
        "team_budgets": Field(team_budgets),
        "ledger": Field(section(LEDGER)),
        "store": Field(section(STORE)),
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
        raise PolicyError(ctx.diagnostics(ctx.errors))
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
        warnings=tuple(ctx.diagnostics(ctx.warnings)),
        prices=top.values.get("prices", MappingProxyType({})),
        team_budgets=top.values.get("team_budgets", MappingProxyType({})),
        ledger=top.values.get("ledger", LedgerSettings()),
        store=top.values.get("store", StoreSettings()),
    )


class _TooDeep(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


class _Loader(yaml.SafeLoader):
    """SafeLoader that stops at MAX_NESTING levels instead of overflowing the stack."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        if self._depth >= MAX_NESTING:
            raise _TooDeep(self.peek_event().start_mark.line + 1)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _compose(text_: str, source: str) -> yaml.Node:
    """YAML text -> node tree (nodes keep line numbers; plain values are never needed)."""
    try:
        root = yaml.compose(text_, Loader=_Loader)
    except _TooDeep as exc:
        message = f"nesting too deep (more than {MAX_NESTING} levels of lists or mappings)"
        raise PolicyError([FieldError(source, exc.line, "", message)]) from None
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
    for dep in deployments:  # litellm's clients ignore a per-call CA bundle (seen on 1.103.7)
        if "ca_file" in dep.values and dep.values.get("provider", "openai") not in OPENAI_COMPATIBLE:
            line, path = dep.where("ca_file")
            ctx.error(line, path, f"is for OpenAI-compatible providers; {dep.values['provider']} goes through "
                      "litellm, which trusts the system store or SSL_CERT_FILE")
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
    _check_weights(ctx, route)


def _check_weights(ctx: Context, route: Record) -> None:
    """`weights` name candidates of this route and only make sense with `strategy: weighted`."""
    weights = route.values.get("weights")
    if weights is None:
        return
    line, path = route.where("weights")
    if route.values.get("strategy") != "weighted":
        ctx.error(line, path, "only apply with `strategy: weighted`; set it or remove `weights`")
    candidates = route.values.get("candidates", ())
    for name in weights:
        if name not in candidates:
            ctx.error(line, f"{path}.{name}", f"is not a candidate of this route{suggest(name, candidates)}")
    if weights and not any(weights.values()):
        ctx.error(line, path, "all weights are 0; give at least one candidate a weight above 0")


def _build_deployment(ctx: Context, rec: Record) -> Deployment:
    """Resolve the API key now; an unset variable is only a warning because the upstream's 401 says it best."""
    var = rec.values.get("api_key_env")
    api_key = (ctx.env.get(var) or None) if var else None
    if var and api_key is None:
        line, path = rec.where("api_key_env")
        ctx.warn(line, path, f"environment variable {var} is not set; requests to {rec.values['name']!r} "
                 "will be sent without a key (set it and reload)")
    return rec.build(api_key=api_key)
