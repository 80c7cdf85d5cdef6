"""What a request needs from a deployment: room in its context window, the input it can take, reasoning.

A candidate that cannot serve the request is skipped before anything is sent (it would only
fail at the provider): its estimated prompt plus the request's max output exceeds the
deployment's ``context_window``, or the request carries images or audio outside its
``modalities``. Undeclared capabilities are not checked. The body is walked only when some
candidate declares modalities, and only when the raw bytes name an image or audio part at all.
"""
from __future__ import annotations

from collections.abc import Iterable

from proxy.call import ModelRequest
from proxy.config.schema import Deployment

# Content-part types that carry non-text input (Chat Completions, Responses, Anthropic Messages).
_PARTS = {"image_url": "image", "input_image": "image", "image": "image", "input_audio": "audio", "audio": "audio"}
_MARKERS = (b'"image_url"', b'"input_image"', b'"image"', b'"input_audio"', b'"audio"')


def media_of(req: ModelRequest) -> frozenset[str]:
    """The non-text modalities ("image", "audio") the request's input carries."""
    raw = req.raw
    if raw is not None and not any(marker in raw for marker in _MARKERS):
        return frozenset()
    body = req.body
    found: set[str] = set()
    for key in ("messages", "input"):
        items = body.get(key)
        if isinstance(items, list):
            for item in items:
                if isinstance(item, dict):
                    _scan(item.get("content"), found)
    return frozenset(found)


def _scan(parts: object, found: set[str]) -> None:
    if isinstance(parts, list):
        for part in parts:
            if isinstance(part, dict):
                kind = _PARTS.get(part.get("type"))
                if kind is not None:
                    found.add(kind)


def wants_deep_reasoning(req: ModelRequest) -> bool:
    """``reasoning: {effort: high}`` (Responses) or ``reasoning_effort: high`` (Chat Completions)."""
    body = req.body
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else body.get("reasoning_effort")
    return effort == "high"


def unable(candidates: Iterable[Deployment], req: ModelRequest) -> dict[str, str]:
    """Candidates that cannot take ``req`` -> why ("context", "image", "audio")."""
    declared = [d for d in candidates if d.context_window is not None or d.modalities is not None]
    if not declared:
        return {}
    media = media_of(req) if any(d.modalities is not None for d in declared) else frozenset()
    need = req.input_estimate + (req.max_output_tokens or 0)
    out: dict[str, str] = {}
    for dep in declared:
        missing = sorted(media - set(dep.modalities)) if dep.modalities is not None else []
        if missing:
            out[dep.name] = missing[0]
        elif dep.context_window is not None and not media and need > dep.context_window:
            out[dep.name] = "context"  # a prompt with media is not sized from its bytes (base64 inflates them)
    return out


def explain(dep: Deployment, why: str, req: ModelRequest) -> str:
    """One candidate's reason, for the 400 when no candidate is able."""
    if why == "context":
        return (f"{dep.name} takes {dep.context_window} tokens, this request needs about "
                f"{req.input_estimate + (req.max_output_tokens or 0)} (prompt + max_tokens)")
    return f"{dep.name} does not take {why} input"
