"""JSON schemas for tools: from a function's signature, or given explicitly.

From a signature we build a pydantic model (so ``Annotated[..., Field(...)]``, defaults,
``Literal``, ``Optional`` and nested models all work) and export its JSON schema in the shape an
OpenAI Realtime function tool accepts as ``parameters``: an ``object`` with ``properties``,
``required`` and ``additionalProperties: false``, with ``$ref``s inlined and pydantic's ``title``s
dropped (they only cost tokens). Descriptions come from the docstring: its first paragraph
describes the tool, a Google-style ``Args:`` section describes each argument.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from typing import Annotated, Any

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

from dialtone_tools.context import ToolContext
from dialtone_tools.errors import ToolDefinitionError

_SECTION = re.compile(r"^(Args|Arguments|Parameters|Returns|Return|Yields|Raises|Examples?|Notes?|Attributes):\s*$")
_ARG = re.compile(r"^(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into the summary (first paragraph) and per-argument texts.

    Args:
        doc: The raw docstring (``fn.__doc__``), or None.

    Returns:
        The first paragraph joined on one line, and ``{argument name: description}``.
    """
    lines = inspect.cleandoc(doc or "").splitlines()
    summary: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION.match(line.strip()):
            break
        summary.append(line.strip())
    args: dict[str, str] = {}
    in_args, current, base_indent = False, None, None
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if _SECTION.match(line) and indent == 0:
            in_args = stripped.rstrip(":") in ("Args", "Arguments", "Parameters")
            current, base_indent = None, None
            continue
        if not in_args or not stripped:
            continue
        if base_indent is None:
            base_indent = indent
        match = _ARG.match(stripped)
        if indent == base_indent and match:
            current = match.group(1).lstrip("*")
            args[current] = match.group(3).strip()
        elif indent > base_indent and current:  # a continuation line of the current argument
            args[current] = f"{args[current]} {stripped}".strip()
        elif indent < base_indent:
            in_args = False
    return " ".join(summary), args


def _is_context(annotation: Any) -> bool:
    return annotation is ToolContext or (isinstance(annotation, str) and annotation.endswith("ToolContext"))


def signature_model(fn: Callable[..., Any], name: str) -> tuple[type[BaseModel], str | None, str]:
    """Build the pydantic model of ``fn``'s arguments.

    Args:
        fn: The tool function.
        name: The tool's name (names the model).

    Returns:
        The model (extra arguments forbidden), the name of the ``ToolContext`` parameter if any,
        and the docstring's summary.

    Raises:
        ToolDefinitionError: A parameter without a type hint, ``*args``/``**kwargs``, or a
            positional-only parameter (tools are called with keyword arguments).
    """
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise ToolDefinitionError(f"tool {name}: cannot resolve type hints: {exc}") from exc
    summary, arg_docs = parse_docstring(fn.__doc__)
    fields: dict[str, Any] = {}
    context_param = None
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise ToolDefinitionError(f"tool {name}: parameter {param.name} must be an ordinary keyword parameter")
        annotation = hints.get(param.name, param.annotation)
        if _is_context(annotation):
            context_param = param.name
            continue
        if annotation is inspect.Parameter.empty:
            raise ToolDefinitionError(f"tool {name}: parameter {param.name} needs a type hint")
        default = ... if param.default is inspect.Parameter.empty else param.default
        described = _has_description(annotation) or (isinstance(default, FieldInfo) and default.description)
        if param.name in arg_docs and not described:
            annotation = Annotated[annotation, Field(description=arg_docs[param.name])]
        fields[param.name] = (annotation, default)
    model = create_model(f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
    return model, context_param, summary


def _has_description(annotation: Any) -> bool:
    """Whether an ``Annotated[..., Field(description=...)]`` already describes the argument."""
    return any(
        isinstance(meta, FieldInfo) and meta.description for meta in getattr(annotation, "__metadata__", ())
    )


def model_parameters(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema as a Realtime function tool's ``parameters``."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})
    schema = _clean(_inline(schema, defs))
    schema.setdefault("properties", {})
    schema.setdefault("required", [])
    schema["additionalProperties"] = False
    return schema


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Replace every ``{"$ref": "#/$defs/X"}`` by the definition itself (no recursive models)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            target = dict(defs[ref.removeprefix("#/$defs/")])
            target.update({k: v for k, v in node.items() if k != "$ref"})
            return _inline(target, defs)
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _clean(node: Any) -> Any:
    """Drop pydantic's generated ``title`` keys (but keep a property that is named ``title``)."""
    if isinstance(node, dict):
        return {
            k: (_clean_properties(v) if k == "properties" else _clean(v))
            for k, v in node.items()
            if not (k == "title" and isinstance(v, str))
        }
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return node


def _clean_properties(properties: dict[str, Any]) -> dict[str, Any]:
    return {name: _clean(sub) for name, sub in properties.items()}


def explicit_validator(name: str, parameters: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """Check an explicitly given ``parameters`` schema and return its validator.

    Raises:
        ToolDefinitionError: The schema is invalid or is not an object schema.
    """
    try:
        jsonschema.Draft202012Validator.check_schema(parameters)
    except jsonschema.SchemaError as exc:
        raise ToolDefinitionError(f"tool {name}: invalid parameters schema: {exc.message}") from exc
    if parameters.get("type") != "object":
        raise ToolDefinitionError(f'tool {name}: parameters must be a schema of "type": "object"')
    return jsonschema.Draft202012Validator(parameters)


def first_schema_error(validator: jsonschema.Draft202012Validator, arguments: Any) -> str | None:
    """The most relevant violation of ``arguments``, as ``"<field path>: <message>"``, or None."""
    error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
    if error is None:
        return None
    path = ".".join(str(p) for p in error.absolute_path)
    return f"{path}: {error.message}" if path else error.message
