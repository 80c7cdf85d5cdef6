"""Check simulator output the two ways a client would: OpenAI's published OpenAPI schemas
(a vendored subset, see ``openai_openapi_subset.json`` for the commit) and the openai SDK's
pydantic types in strict mode."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from pydantic import BaseModel, TypeAdapter
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

_SUBSET = Path(__file__).with_name("openai_openapi_subset.json")
_URI = "urn:openai-openapi"


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true`` (still used in places) as JSON Schema: also accept null."""
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable(v) for k, v in node.items() if k != "nullable"}
    return {"anyOf": [out, {"type": "null"}]} if node.get("nullable") is True else out


@cache
def _registry() -> Registry:
    doc = _nullable(json.loads(_SUBSET.read_text()))
    return Registry().with_resource(_URI, Resource.from_contents(doc, default_specification=_DRAFT))


_DRAFT = DRAFT202012


def conforms(schema_name: str, instance: Any) -> None:
    """Raise if ``instance`` is not valid for components/schemas/``schema_name``."""
    validator = Draft202012Validator({"$ref": f"{_URI}#/components/schemas/{schema_name}"}, registry=_registry())
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, f"{schema_name}: " + "; ".join(f"{list(e.path)}: {e.message[:300]}" for e in errors[:5])


def strict(model: type[BaseModel] | Any, data: Any) -> Any:
    """Validate ``data`` with an SDK type (a model or a union alias) in pydantic strict mode."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model.model_validate(data, strict=True)
    return TypeAdapter(model).validate_python(data, strict=True)


def sse_events(raw: str) -> list[dict[str, Any]]:
    """The JSON payload of every SSE event in ``raw`` ([DONE] left out)."""
    out = []
    for block in raw.strip().split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: ") and line != "data: [DONE]":
                out.append(json.loads(line[6:]))
    return out
