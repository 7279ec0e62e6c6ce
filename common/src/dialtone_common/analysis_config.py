"""Post-call analysis of an agent's calls: its ``[analysis]`` table in ``agent.toml``, checked in
one place (the bridge checks the shape at start-up, the transcript-writer's analysis worker uses it).

::

    [analysis]
    summary = true                       # a few sentences about the call (default true)
    success_criteria = "The caller got an answer or a callback was arranged."
    model = "gpt-5-mini"                 # optional; default: the ANALYSIS_MODEL setting

    [analysis.schema]                    # optional: fields to extract, a JSON Schema object
    type = "object"
    [analysis.schema.properties.reason]
    type = "string"
    description = "Why the caller called, in a few words."
    [analysis.schema.properties.order_id]
    type = ["string", "null"]            # an optional field is nullable, never left out

The schema goes to the model with OpenAI's structured outputs in strict mode, which accepts a
subset of JSON Schema; it is checked against that subset here, so that a schema the API would
refuse stops the service at start-up with the agent's file and the field at fault, rather than
failing every call's analysis. ``additionalProperties`` (only ``false`` is allowed) and
``required`` (every property) are filled in when left out.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_KEYS = {"summary", "schema", "success_criteria", "model"}
_TYPES = {"string", "number", "integer", "boolean", "object", "array", "null"}
# The keywords strict structured outputs accept (OpenAI's "supported schemas").
_KEYWORDS = {
    "type", "properties", "required", "additionalProperties", "items", "enum", "const", "anyOf",
    "description", "title", "$ref", "$defs", "definitions", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "multipleOf", "pattern", "format", "minItems", "maxItems",
}  # fmt: skip
_FORMATS = {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
MAX_DEPTH = 9  # strict mode allows 10 levels of nesting; the analysis object wraps the fields in one
MAX_PROPERTIES = 1000
MAX_CRITERIA = 4000


class AnalysisConfigError(ValueError):
    """An ``[analysis]`` table that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class AnalysisConfig:
    """One agent's analysis. ``schema`` is the normalized extraction schema (None: no fields);
    ``model`` None means the ``ANALYSIS_MODEL`` setting."""

    agent: str
    summary: bool = True
    schema: dict[str, Any] | None = None
    success_criteria: str | None = None
    model: str | None = None


def check_strict_schema(schema: Any, where: str) -> dict[str, Any]:
    """A copy of ``schema`` that strict structured outputs accept, ``additionalProperties: false``
    and ``required`` filled in where they were left out.

    Raises:
        AnalysisConfigError: naming ``where`` and the path of the field at fault.
    """
    if not isinstance(schema, dict):
        raise AnalysisConfigError(f"{where}: must be a table (a JSON Schema object)")
    out = copy.deepcopy(schema)
    if out.get("type", "object") != "object" or "anyOf" in out:
        raise AnalysisConfigError(f"{where}: the schema's root must be type = \"object\" (not anyOf)")
    out["type"] = "object"
    if not out.get("properties"):
        raise AnalysisConfigError(f"{where}.properties: the schema needs at least one property")
    count = [0]
    _check_node(out, where, 0, count)
    for name in ("$defs", "definitions"):
        for key, sub in (out.get(name) or {}).items():
            _check_node(sub, f"{where}.{name}.{key}", 1, count)
    try:  # the whole schema must also be valid JSON Schema (jsonschema is there in the writer's tests)
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError
    except ImportError:  # pragma: no cover - the checks above still hold
        return out
    try:
        Draft202012Validator.check_schema(out)
    except SchemaError as exc:
        path = ".".join(str(p) for p in exc.path)
        raise AnalysisConfigError(f"{where}{'.' + path if path else ''}: {exc.message}") from None
    return out


def _check_node(node: Any, where: str, depth: int, count: list[int]) -> None:
    if not isinstance(node, dict):
        raise AnalysisConfigError(f"{where}: must be a table (a JSON Schema)")
    if depth > MAX_DEPTH:
        raise AnalysisConfigError(f"{where}: nested too deep (at most {MAX_DEPTH} levels)")
    unknown = sorted(set(node) - _KEYWORDS)
    if unknown:
        raise AnalysisConfigError(
            f"{where}: {unknown} not supported by strict structured outputs; use {sorted(_KEYWORDS)}"
        )
    if "anyOf" in node:
        if not isinstance(node["anyOf"], list) or not node["anyOf"]:
            raise AnalysisConfigError(f"{where}.anyOf: must be a non-empty array of schemas")
        for i, sub in enumerate(node["anyOf"]):
            _check_node(sub, f"{where}.anyOf[{i}]", depth, count)
        return
    if "$ref" in node:
        return
    if "enum" in node or "const" in node:
        if "enum" in node and (not isinstance(node["enum"], list) or not node["enum"]):
            raise AnalysisConfigError(f"{where}.enum: must be a non-empty array")
    elif "type" not in node:
        raise AnalysisConfigError(f"{where}: type is required (string, number, integer, boolean, object, array, null)")
    types = node.get("type", [])
    types = [types] if isinstance(types, str) else types
    if not isinstance(types, list) or not set(types) <= _TYPES:
        raise AnalysisConfigError(f"{where}.type: {node.get('type')!r} is not one of {sorted(_TYPES)} (or a list of them)")
    if "format" in node and node["format"] not in _FORMATS:
        raise AnalysisConfigError(f"{where}.format: {node['format']!r} is not one of {sorted(_FORMATS)}")
    if "object" in types or "properties" in node:
        props = node.get("properties")
        if not isinstance(props, dict) or not props:
            raise AnalysisConfigError(f"{where}.properties: an object needs at least one property")
        count[0] += len(props)
        if count[0] > MAX_PROPERTIES:
            raise AnalysisConfigError(f"{where}: more than {MAX_PROPERTIES} properties in all")
        extra = node.setdefault("additionalProperties", False)
        if extra is not False:
            raise AnalysisConfigError(f"{where}.additionalProperties: strict mode needs false (it is filled in when left out)")
        required = node.setdefault("required", list(props))
        if not isinstance(required, list) or sorted(required) != sorted(props):
            missing = sorted(set(props) - set(required if isinstance(required, list) else []))
            raise AnalysisConfigError(
                f"{where}.required: strict mode needs every property required (missing {missing}); "
                "make an optional one nullable instead, e.g. type = [\"string\", \"null\"]"
            )
        for key, sub in props.items():
            _check_node(sub, f"{where}.properties.{key}", depth + 1, count)
    if "array" in types:
        if "items" not in node:
            raise AnalysisConfigError(f"{where}.items: an array needs items (the schema of its elements)")
        _check_node(node["items"], f"{where}.items", depth + 1, count)


def parse_analysis(agent: str, raw: Any, where: str) -> AnalysisConfig:
    """One agent's ``[analysis]`` table (``raw``); ``where`` names its file in errors.

    Raises:
        AnalysisConfigError: a key unknown or a value of the wrong kind, or a schema strict mode refuses.
    """
    where = f"{where} [analysis]"
    if not isinstance(raw, dict):
        raise AnalysisConfigError(f"{where}: must be a table")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise AnalysisConfigError(f"{where}: unknown keys {unknown}; known: {sorted(_KEYS)}")
    summary = raw.get("summary", True)
    if not isinstance(summary, bool):
        raise AnalysisConfigError(f"{where}.summary: must be true or false")
    criteria = raw.get("success_criteria")
    if criteria is not None and (not isinstance(criteria, str) or not criteria.strip() or len(criteria) > MAX_CRITERIA):
        raise AnalysisConfigError(f"{where}.success_criteria: must be text, 1 to {MAX_CRITERIA} characters")
    model = raw.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise AnalysisConfigError(f"{where}.model: must be a model name, e.g. \"gpt-5-mini\"")
    schema = check_strict_schema(raw["schema"], f"{where}.schema") if "schema" in raw else None
    return AnalysisConfig(agent, summary, schema, criteria.strip() if criteria else None, model)


def load_agent_analysis(agents_dir: Path) -> dict[str, AnalysisConfig]:
    """Every agent's analysis, by agent name (its folder); agents without ``[analysis]`` are left out.

    Raises:
        AnalysisConfigError: a file that cannot be read, or an ``[analysis]`` table that is wrong.
    """
    if not agents_dir.is_dir():
        return {}
    out: dict[str, AnalysisConfig] = {}
    for path in sorted(agents_dir.glob("*/agent.toml")):
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise AnalysisConfigError(f"{path}: {exc}") from exc
        if "analysis" in raw:
            out[path.parent.name] = parse_analysis(path.parent.name, raw["analysis"], str(path))
    return out


VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "success": {"type": "boolean", "description": "whether the call met the success criteria"},
        "reason": {"type": "string", "description": "why, in one or two sentences"},
    },
    "required": ["success", "reason"],
    "additionalProperties": False,
}


def response_schema(config: AnalysisConfig) -> dict[str, Any]:
    """The one object the model answers: ``summary`` (if on), ``fields`` (the extraction schema,
    if any) and ``verdict``."""
    props: dict[str, Any] = {}
    if config.summary:
        props["summary"] = {"type": "string", "description": "a summary of the call in two to four sentences"}
    if config.schema is not None:
        props["fields"] = config.schema
    props["verdict"] = VERDICT_SCHEMA
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


# USD per 1M text tokens (input, cached input, output): OpenAI's standard prices. ANALYSIS_PRICES
# replaces the whole table (JSON, same shape).
DEFAULT_TEXT_PRICES: dict[str, dict[str, float]] = {
    "gpt-5-mini": {"input": 0.25, "cached": 0.025, "output": 2.0},
    "gpt-5-nano": {"input": 0.05, "cached": 0.005, "output": 0.4},
    "gpt-5": {"input": 1.25, "cached": 0.125, "output": 10.0},
    "gpt-4.1-mini": {"input": 0.4, "cached": 0.1, "output": 1.6},
    "gpt-4.1-nano": {"input": 0.1, "cached": 0.025, "output": 0.4},
    "gpt-4o-mini": {"input": 0.15, "cached": 0.075, "output": 0.6},
}


def text_cost_usd(prices: Mapping[str, Mapping[str, float]], model: str, tokens: Mapping[str, int]) -> float:
    """The price of one response's ``tokens`` (``input`` including ``cached``, and ``output``), by
    the model's row; a dated snapshot (``gpt-5-mini-2025-08-07``) falls back to its alias's row;
    an unknown model costs 0."""
    row = prices.get(model)
    if row is None:
        row = next((prices[m] for m in sorted(prices, key=len, reverse=True) if model.startswith(m + "-")), None)
    if row is None:
        return 0.0
    cached = tokens.get("cached", 0)
    fresh = max(tokens.get("input", 0) - cached, 0)
    usd = (fresh * row.get("input", 0) + cached * row.get("cached", row.get("input", 0))
           + tokens.get("output", 0) * row.get("output", 0)) / 1_000_000
    return round(usd, 8)
