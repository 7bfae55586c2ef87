"""Validate JSON documents against OpenAI's own OpenAPI description.

    from tests.openapi import validate
    validate("CreateChatCompletionStreamResponse", chunk)  # raises jsonschema.ValidationError

The document is vendored at ``tests/spec/openai-openapi.json`` (its origin in ``SOURCE.txt``;
override with the ``TOOTI_OPENAPI_SPEC`` environment variable). It is read once per process, and one validator per
schema name is built on first use and kept, so validating many chunks costs only the checking.

The spec says OpenAPI 3.1 but still marks many fields with the 3.0 keyword ``nullable: true``
(for example a stream chunk's ``finish_reason``), which JSON Schema 2020-12 ignores; it is rewritten
here to a real "or null" so that the documents OpenAI itself sends validate.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry
from referencing.jsonschema import DRAFT202012

__all__ = ["ValidationError", "spec_path", "validate", "validator"]

_URI = "urn:tooti:openai-openapi"
_COMBINATORS = ("$ref", "allOf", "anyOf", "oneOf")


def spec_path() -> Path:
    """Where the OpenAPI document is read from."""
    override = os.environ.get("TOOTI_OPENAPI_SPEC")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent / "spec" / "openai-openapi.json"


@functools.cache
def _registry() -> Registry:
    path = spec_path()
    try:
        with path.open("rb") as f:
            spec = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"OpenAI OpenAPI document not found at {path} (set TOOTI_OPENAPI_SPEC)"
        ) from None
    spec["components"]["schemas"] = _nullable_to_null(spec["components"]["schemas"])
    return Registry().with_resource(_URI, DRAFT202012.create_resource(spec))


@functools.cache
def validator(schema_name: str) -> Draft202012Validator:
    """The (cached) validator for ``components.schemas[schema_name]``."""
    registry = _registry()
    schemas = registry.contents(_URI)["components"]["schemas"]
    if schema_name not in schemas:
        raise KeyError(f"no schema {schema_name!r} in {spec_path()}")
    return Draft202012Validator({"$ref": f"{_URI}#/components/schemas/{schema_name}"}, registry=registry)


def validate(schema_name: str, instance: Any) -> None:
    """Raise :class:`jsonschema.ValidationError` (the most relevant one) unless ``instance`` is a
    valid ``components.schemas[schema_name]``."""
    error = best_match(validator(schema_name).iter_errors(instance))
    if error is not None:
        raise error


def _nullable_to_null(node: Any) -> Any:
    """A copy of ``node`` where ``nullable: true`` also admits ``null``."""
    if isinstance(node, list):
        return [_nullable_to_null(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _nullable_to_null(value) for key, value in node.items()}
    # Only the keyword: a property that happens to be named "nullable" holds a schema, not True.
    if out.get("nullable") is not True:
        return out
    del out["nullable"]
    if "type" in out and not any(key in out for key in _COMBINATORS):
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"] if "null" not in types else types
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        return out
    # With a $ref or a combinator the constraint cannot be widened in place: wrap it instead.
    return {"anyOf": [out, {"type": "null"}]}
