"""A small table-driven checker for YAML nodes.

Each config section is a ``Spec``: YAML key -> ``Field(converter, required)``.
Converters take a composed YAML node (which still knows its line) and return a
Python value or raise ``Invalid``; ``read`` applies a Spec to a mapping node and
records every problem in the ``Context`` instead of stopping at the first.
Adding a setting is one ``Field`` line; adding a section is one ``Spec``.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import ssl
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import yaml
from yaml.constructor import SafeConstructor

from .env import NAME, WHOLE_REFERENCE, UnsetVariable, interpolate, literal_part
from .errors import FieldError

_NULL = "tag:yaml.org,2002:null"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_KINDS = {"null": "nothing", "bool": "a boolean", "int": "an integer", "float": "a number", "str": "a string"}
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
# Headers whose value is a credential: anything but an auth scheme word must come from ${VAR}.
_CREDENTIAL_HEADER = re.compile(r"(?i)(^|[-_])(authorization|cookie|api[-_]?key|key|token|secret|password)($|[-_])")
_AUTH_SCHEME = re.compile(r"(?i)(bearer|basic|token|apikey)?")
# What a pasted key looks like in any header: a provider key prefix, or a scheme and a token.
_KEY_SHAPE = re.compile(r"\b(sk|pk|rk|gsk|csk|xai)-[A-Za-z0-9_-]{8,}|(?i:\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,})")
_PASTED = "put it in an environment variable and refer to it with ${VAR} (and rotate it if this file was ever shared)"
_constructor = SafeConstructor()


class Invalid(Exception):
    """A converter rejected the node it was given; the message says how to fix it."""


class Reported(Exception):
    """A nested section already recorded its own, more precise errors."""


@dataclass(slots=True)
class Context:
    """Where errors and warnings accumulate while one policy file is checked."""

    file: str
    env: Mapping[str, str]
    errors: list[FieldError] = field(default_factory=list)
    warnings: list[FieldError] = field(default_factory=list)
    from_env: dict[str, str] = field(default_factory=dict)  # value -> "${NAME}" it came from, for redaction

    def error(self, line: int, path: str, message: str) -> None:
        self.errors.append(FieldError(self.file, line, path, message))

    def warn(self, line: int, path: str, message: str) -> None:
        self.warnings.append(FieldError(self.file, line, path, message))

    def diagnostics(self, found: list[FieldError]) -> list[FieldError]:
        """``found`` by line, each showing environment values only as their ``${NAME}``."""
        return sorted((e.redacted(self.from_env) for e in found), key=lambda e: e.line)


Converter = Callable[[Context, yaml.Node, str], Any]


@dataclass(frozen=True, slots=True)
class Field:
    convert: Converter
    required: bool = False
    attr: str | None = None  # dataclass attribute, when it differs from the YAML key (aliases)


@dataclass(frozen=True, slots=True)
class Spec:
    fields: Mapping[str, Field]
    build: Callable[..., Any] | None = None  # dataclass receiving the checked values as keyword arguments


@dataclass(slots=True)
class Record:
    """A checked mapping: converted values plus where each came from, for cross-field errors."""

    spec: Spec
    path: str
    node: yaml.Node
    values: dict[str, Any] = field(default_factory=dict)  # by attribute name; only keys present and valid
    sources: dict[str, tuple[str, yaml.Node]] = field(default_factory=dict)  # attr -> (YAML key, value node)
    ok: bool = False

    def where(self, attr: str) -> tuple[int, str]:
        """Line and field path of ``attr``'s value, or of this mapping when the key is absent."""
        if attr in self.sources:
            key, node = self.sources[attr]
            return line_of(node), join(self.path, key)
        return line_of(self.node), join(self.path, attr)

    def build(self, **extra: Any) -> Any:
        if self.spec.build is None:
            raise TypeError(f"the spec for {self.path or 'the policy'} has no build function")
        return self.spec.build(**self.values, **extra)


def line_of(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def suggest(word: str, options: Collection[str], *, list_all: bool = False) -> str:
    """'; did you mean 'x'?' for a likely typo; the valid options when there is none (or always, with list_all)."""
    close = difflib.get_close_matches(word, list(options), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    if options and (list_all or not close):
        hint += f" (valid: {', '.join(sorted(options))})" if close else f"; valid: {', '.join(sorted(options))}"
    return hint


def kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return _KINDS.get(node.tag.rsplit(":", 1)[-1], node.tag)


def is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL


def pairs(ctx: Context, node: yaml.MappingNode, path: str) -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
    """(key, key node, value node) for each entry; reports non-string and duplicate keys."""
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or is_null(key_node):
            ctx.error(line_of(key_node), path, f"keys must be strings, got {kind(key_node)}")
            continue
        key = key_node.value
        if key in seen:
            ctx.error(
                line_of(key_node), join(path, key),
                f"duplicate key (first on line {seen[key]}); YAML would silently keep only the last one, remove one",
            )
            continue
        seen[key] = line_of(key_node)
        yield key, key_node, value_node


def read(ctx: Context, node: yaml.Node, path: str, spec: Spec) -> Record:
    """Check a mapping node against ``spec``; a missing or empty section counts as ``{}``."""
    before = len(ctx.errors)
    record = Record(spec, path, node)
    if isinstance(node, yaml.MappingNode):
        entries = pairs(ctx, node, path)
    elif is_null(node):
        entries = iter(())
    else:
        ctx.error(line_of(node), path, f"expected a mapping of 'key: value' lines, got {kind(node)}")
        return record
    for key, key_node, value_node in entries:
        spec_field = spec.fields.get(key)
        if spec_field is None:
            ctx.error(line_of(key_node), join(path, key), f"unknown key {key!r}{suggest(key, spec.fields)}")
            continue
        attr = spec_field.attr or key
        if attr in record.sources:
            other = record.sources[attr][0]
            ctx.error(line_of(key_node), join(path, key), f"{key!r} and {other!r} set the same thing; keep only one")
            continue
        record.sources[attr] = (key, value_node)
        try:
            record.values[attr] = spec_field.convert(ctx, value_node, join(path, key))
        except Invalid as exc:
            ctx.error(line_of(value_node), join(path, key), str(exc))
        except Reported:
            pass
    for key, spec_field in spec.fields.items():
        if spec_field.required and (spec_field.attr or key) not in record.sources:
            ctx.error(line_of(node), join(path, key), f"missing required key {key!r}")
    record.ok = len(ctx.errors) == before
    return record


# --- converters -------------------------------------------------------------


def text(ctx: Context, node: yaml.Node, path: str) -> str:
    """Any non-empty scalar as written, with ${VAR} references interpolated."""
    if not isinstance(node, yaml.ScalarNode) or is_null(node):
        raise Invalid(f"expected a string, got {kind(node)}")
    try:
        value = interpolate(node.value, ctx.env, ctx.from_env)
    except UnsetVariable as exc:
        raise Invalid(
            f"environment variable {exc.name} is not set; set it, or give a default: ${{{exc.name}:-value}}"
        ) from None
    if not value:
        raise Invalid("must not be empty")
    return value


def one_of(choices: frozenset[str], what: str) -> Converter:
    def convert(ctx: Context, node: yaml.Node, path: str) -> str:
        value = text(ctx, node, path)
        if value not in choices:
            raise Invalid(f"unknown {what} {value!r}{suggest(value, choices, list_all=True)}")
        return value

    return convert


def positive_int(ctx: Context, node: yaml.Node, path: str) -> int:
    if not isinstance(node, yaml.ScalarNode) or node.tag != _INT:
        raise Invalid(f"expected an integer, got {kind(node)}")
    value = _constructor.construct_yaml_int(node)
    if value <= 0:
        raise Invalid(f"must be greater than 0, got {value}")
    return value


def positive_int_or_env(ctx: Context, node: yaml.Node, path: str) -> int:
    """A positive integer, written out or as ``${VAR}`` (a figure the deployment sets, e.g. the replica count)."""
    if not (isinstance(node, yaml.ScalarNode) and node.tag != _INT and "${" in node.value):
        return positive_int(ctx, node, path)
    value = text(ctx, node, path)
    if not value.isdigit() or int(value) <= 0:
        raise Invalid(f"must be a whole number greater than 0, got {value!r}")
    return int(value)


def boolean(ctx: Context, node: yaml.Node, path: str) -> bool:
    if not isinstance(node, yaml.ScalarNode) or node.tag != _BOOL:
        raise Invalid(f"expected true or false, got {kind(node)}")
    return bool(_constructor.construct_yaml_bool(node))


def positive_float(ctx: Context, node: yaml.Node, path: str) -> float:
    if not isinstance(node, yaml.ScalarNode) or node.tag not in (_INT, _FLOAT):
        raise Invalid(f"expected a number, got {kind(node)}")
    construct = _constructor.construct_yaml_int if node.tag == _INT else _constructor.construct_yaml_float
    value = float(construct(node))
    if not (value > 0 and math.isfinite(value)):
        raise Invalid(f"must be a finite number greater than 0, got {value}")
    return value


def port(ctx: Context, node: yaml.Node, path: str) -> int:
    value = positive_int(ctx, node, path)
    if value > 65535:
        raise Invalid(f"must be a TCP port between 1 and 65535, got {value}")
    return value


def http_url(ctx: Context, node: yaml.Node, path: str) -> str:
    """scheme://host[:port][/path] with the trailing '/' stripped (the value is not echoed: it may hold credentials)."""
    value = text(ctx, node, path).rstrip("/")
    parts = urlsplit(value)
    try:
        parts.port
        valid_port = True
    except ValueError:
        valid_port = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not valid_port or parts.query or parts.fragment:
        raise Invalid(
            "must be an http:// or https:// URL like https://api.openai.com/v1 (scheme://host[:port][/path], no query)"
        )
    written = urlsplit(literal_part(node.value))
    if written.username or written.password:
        raise Invalid(f"holds literal credentials (user:password@); {_PASTED}")
    return value


def secret_reference(ctx: Context, node: yaml.Node, path: str) -> str:
    """The NAME of a ``${NAME}`` reference; anything else is treated as a pasted secret and never echoed."""
    if isinstance(node, yaml.ScalarNode) and (match := WHOLE_REFERENCE.fullmatch(node.value.strip())):
        return match["name"]
    raise Invalid(
        "must be exactly one environment variable reference such as ${CEREBRAS_API_KEY} (no default); "
        "keys do not belong in the policy file: move the value into an environment variable "
        "(and rotate it if this file was ever shared)"
    )


def ca_file(ctx: Context, node: yaml.Node, path: str) -> str:
    """A PEM CA bundle, read now so a missing or empty file fails the load, not the first request;
    a relative path is taken from the policy file's folder (where it is shipped beside it)."""
    value = text(ctx, node, path)
    if not os.path.isabs(value) and not ctx.file.startswith("<"):
        value = os.path.join(os.path.dirname(os.path.abspath(ctx.file)), value)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=value)
    except OSError as exc:  # ssl.SSLError is one: no PEM certificate in the file
        reason = exc.strerror if exc.strerror and not isinstance(exc, ssl.SSLError) else "no PEM certificate in it"
        raise Invalid(f"cannot use {value} as a CA bundle: {reason}") from None
    return value


def env_name(ctx: Context, node: yaml.Node, path: str) -> str:
    if NAME.fullmatch(value := text(ctx, node, path)):
        return value
    raise Invalid("must be an environment variable name such as CEREBRAS_API_KEY")


def sha256_hex(ctx: Context, node: yaml.Node, path: str) -> str:
    """The value is not echoed: a wrong one is often the raw key pasted by mistake."""
    value = text(ctx, node, path).lower()
    if re.fullmatch(r"[0-9a-f]{64}", value):
        return value
    raise Invalid("must be 64 hex characters (the sha256 of the key, not the key); compute it with `laneway hash-key`")


def mapping_of(value: Converter, expected: str, *, null_is_empty: bool = True,
               check_key: Callable[[str], str | None] | None = None) -> Converter:
    """A converter for ``name: value`` mappings: every bad key and value is reported at its own line."""

    def convert(ctx: Context, node: yaml.Node, path: str) -> Mapping[str, Any]:
        if null_is_empty and is_null(node):
            return MappingProxyType({})
        if not isinstance(node, yaml.MappingNode):
            raise Invalid(f"expected a mapping of {expected}, got {kind(node)}")
        before = len(ctx.errors)
        result: dict[str, Any] = {}
        for name, key_node, value_node in pairs(ctx, node, path):
            problem = check_key(name) if check_key is not None else None
            if problem:
                ctx.error(line_of(key_node), join(path, name), problem)
                continue
            try:
                result[name] = value(ctx, value_node, join(path, name))
            except Invalid as exc:
                ctx.error(line_of(value_node), join(path, name), str(exc))
            except Reported:
                pass
        if len(ctx.errors) != before:
            raise Reported
        return MappingProxyType(result)

    return convert


_header_values = mapping_of(
    text, "header: value",
    check_key=lambda name: None if _HEADER_NAME.fullmatch(name) else "is not a valid HTTP header name",
)


def headers(ctx: Context, node: yaml.Node, path: str) -> Mapping[str, str]:
    """Extra upstream headers; a credential written into the file is refused (and not echoed)."""
    result = _header_values(ctx, node, path)
    pasted = [(key, value) for key, value in (node.value if result else ()) if _literal_credential(key.value, value.value)]
    for key, value in pasted:
        ctx.error(line_of(value), join(path, key.value), f"holds a literal credential; {_PASTED}, e.g. \"Bearer ${{VAR}}\"")
    if pasted:
        raise Reported
    return result


def _literal_credential(name: str, raw: str) -> bool:
    """The part of a header value the file spells out looks like a key, or is more than a scheme word."""
    written = literal_part(raw).strip()
    if _KEY_SHAPE.search(written):
        return True
    return bool(_CREDENTIAL_HEADER.search(name)) and not _AUTH_SCHEME.fullmatch(written)


def list_of(item: Converter, *, empty: str | None = None) -> Converter:
    """A list (``null`` counts as empty); ``empty`` is the error message if it must not be.

    Items that are Records are always kept (check ``.ok``), so cross-checks still see them.
    """

    def convert(ctx: Context, node: yaml.Node, path: str) -> tuple[Any, ...]:
        if is_null(node):
            children: list[yaml.Node] = []
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            raise Invalid(f"expected a list, got {kind(node)}")
        if not children and empty:
            raise Invalid(empty)
        result = []
        failed = False
        for index, child in enumerate(children):
            child_path = f"{path}[{index}]"
            try:
                result.append(item(ctx, child, child_path))
            except Invalid as exc:
                ctx.error(line_of(child), child_path, str(exc))
                failed = True
            except Reported:
                failed = True
        if failed:  # a partial list would misalign with its nodes; the items' errors are recorded
            raise Reported
        return tuple(result)

    return convert


def record(spec: Spec) -> Converter:
    """Keep the Record (not the built object) so the loader can cross-check it with line numbers."""
    return lambda ctx, node, path: read(ctx, node, path, spec)


def section(spec: Spec) -> Converter:
    """A nested mapping built straight into its dataclass."""

    def convert(ctx: Context, node: yaml.Node, path: str) -> Any:
        checked = read(ctx, node, path, spec)
        if not checked.ok:
            raise Reported
        return checked.build()

    return convert


def redis_url(ctx: Context, node: yaml.Node, path: str) -> str:
    """redis://, rediss:// or unix:// (the value is not echoed: it may hold a password)."""
    value = text(ctx, node, path)
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise Invalid("must be a Redis URL like redis://host:6379/0 (or rediss://, unix://); use ${REDIS_URL} to keep passwords out of the file")
    if urlsplit(literal_part(node.value)).password:
        raise Invalid(f"holds a literal password; {_PASTED}: redis_url: ${{REDIS_URL}} or redis://:${{REDIS_PASSWORD}}@host:6379/0")
    return value
