"""A local stand-in for the OpenAI Responses API (``POST /v1/responses``), for post-call analysis.

Usage::

    async with ResponsesSimulator(api_key="sk-test") as sim:
        client = AsyncOpenAI(api_key="sk-test", base_url=sim.base_url)
        ...
        assert not sim.violations

Every request body is checked against the official SDK's own types
(``ResponseCreateParamsNonStreaming``, validated with a pydantic ``TypeAdapter``), and, since
those types let unknown keys through, walked for keys they do not declare, at any depth. A
``text.format`` of type ``json_schema`` must be strict. What fails is a violation (HTTP 400, as
the real API answers, and recorded in :attr:`violations`, judged by :mod:`dialtone_sim.verdicts`).

The answer is a ``Response`` object (itself validated against ``openai.types.responses.Response``
before it is sent; a failure is a ``server_violation``) whose output text is a JSON value that
satisfies the requested schema, generated deterministically: the first enum value, 0 (or the
minimum), true, one item per array, the first non-null type, and for strings words taken from
the transcript in the request's input (a ``summary`` gets the first words of it). :attr:`overrides`
sets the value of a property by its name (e.g. ``{"success": False}``), wherever it is.

Faults on demand: :meth:`fail_next` (the next ``n`` requests answer ``status``),
:attr:`always_fail` (every request does), :attr:`delay_s` (the answer waits this long).
"""

from __future__ import annotations

import asyncio
import collections.abc
import functools
import itertools
import re
import time
import types
import typing
from types import TracebackType
from typing import Any

import orjson
import pydantic
import typing_extensions
from aiohttp import web
from openai.types.responses import Response
from openai.types.responses.response_create_params import ResponseCreateParamsNonStreaming

from . import verdicts
from .oracle import _extras

__all__ = ["ResponsesSimulator", "satisfying"]

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{2,}")


@functools.cache
def _request_adapter() -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(ResponseCreateParamsNonStreaming)


def _typeddict_hints(tp: Any) -> dict[str, Any]:
    return typing.get_type_hints(tp)


def _strip(tp: Any) -> Any:
    """``Required[X]``, ``NotRequired[X]``, ``Annotated[X, ...]`` -> ``X``."""
    while typing.get_origin(tp) in (typing.Required, typing.NotRequired, typing.Annotated,
                                    typing_extensions.Required, typing_extensions.NotRequired):
        tp = typing.get_args(tp)[0]
    return tp


def unknown_keys(value: Any, tp: Any, path: str = "") -> list[str]:
    """Dotted paths of the keys of ``value`` that the SDK's TypedDict ``tp`` does not declare, at any depth."""
    tp = _strip(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        members = [m for m in map(_strip, typing.get_args(tp)) if typing_extensions.is_typeddict(m) or typing.get_origin(m)]
        if isinstance(value, dict):
            dicts = [m for m in members if typing_extensions.is_typeddict(m)]
            tagged = [m for m in dicts if value.get("type") in (_literal_type(m) or ())]
            candidates = tagged or dicts
            if candidates:
                return min((unknown_keys(value, m, path) for m in candidates), key=len)
        if isinstance(value, list):
            for m in members:
                if typing.get_origin(m) in (list, collections.abc.Iterable, collections.abc.Sequence):
                    return unknown_keys(value, m, path)
        return []
    if typing_extensions.is_typeddict(tp) and isinstance(value, dict):
        hints = _typeddict_hints(tp)
        found = [f"{path}.{k}" if path else k for k in value if k not in hints]
        for k, v in value.items():
            if k in hints:
                found += unknown_keys(v, hints[k], f"{path}.{k}" if path else k)
        return found
    if origin is not None and isinstance(value, list) and typing.get_args(tp):
        item = typing.get_args(tp)[0]
        return [p for i, v in enumerate(value) for p in unknown_keys(v, item, f"{path}[{i}]")]
    return []


def _literal_type(tp: Any) -> tuple[Any, ...] | None:
    hint = _typeddict_hints(tp).get("type")
    if hint is None:
        return None
    hint = _strip(hint)
    return typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None


def satisfying(schema: dict[str, Any], words: list[str], overrides: dict[str, Any], name: str = "",
               defs: dict[str, Any] | None = None) -> Any:
    """A value that ``schema`` (the strict subset of JSON Schema) accepts, deterministically."""
    defs = defs if defs is not None else {**schema.get("$defs", {}), **schema.get("definitions", {})}
    if name in overrides:
        return overrides[name]
    if "$ref" in schema:
        return satisfying(defs[schema["$ref"].rsplit("/", 1)[-1]], words, overrides, name, defs)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"] or schema["anyOf"]
        return satisfying(options[0], words, overrides, name, defs)
    types = schema.get("type", "object")
    types = [types] if isinstance(types, str) else list(types)
    kind = next((t for t in types if t != "null"), "null")
    if kind == "object":
        return {k: satisfying(v, words, overrides, k, defs) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        return [satisfying(schema["items"], words, overrides, name, defs) for _ in range(max(1, schema.get("minItems", 1)))]
    if kind == "boolean":
        return True
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
        return int(low) if kind == "integer" else float(low)
    if kind == "string":
        fmt = schema.get("format")
        if fmt == "date-time":
            return "2026-01-01T00:00:00Z"
        if fmt == "date":
            return "2026-01-01"
        if name == "summary":
            return ("The caller said: " + " ".join(words[:16]) + ".") if words else "A short call."
        return " ".join(words[:3]) if words else name or "text"
    return None


def _input_text(body: dict[str, Any]) -> str:
    value = body.get("input")
    if isinstance(value, str):
        return value
    texts: list[str] = []
    for item in value or []:
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [c.get("text", "") for c in content if isinstance(c, dict)]
    return "\n".join(texts)


def transcript_words(text: str) -> list[str]:
    """The words of the transcript part of an analysis request (after ``Transcript:``), else all."""
    _, found, tail = text.partition("Transcript:")
    body = tail if found else text
    lines = [line.split(":", 1)[1] if ":" in line else line for line in body.splitlines()]
    return _WORD.findall(" ".join(lines))


class ResponsesSimulator:
    """Serve ``http://HOST:PORT/v1/responses`` like the real API (non-streaming, structured outputs).

    Args:
        api_key: when set, require ``Authorization: Bearer <api_key>`` (else HTTP 401, a violation).
    """

    def __init__(self, *, api_key: str | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.api_key = api_key
        self.host, self.port = host, port
        self.requests: list[dict[str, Any]] = []  # every body received, in order
        self.answers: list[dict[str, Any]] = []  # every Response sent
        self.violations: list[str] = []
        self.server_violations: list[str] = []
        self.internal_errors: list[str] = []
        self.overrides: dict[str, Any] = {}
        self.always_fail: int | None = None
        self.delay_s = 0.0
        self._fail_next: list[int] = []
        self._log: list[str] = []
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        verdicts.register(self)

    def sim_errors(self) -> list[str]:
        return self._log

    def record(self, kind: str, message: str) -> None:
        {"violation": self.violations, "server_violation": self.server_violations,
         "internal_error": self.internal_errors}[kind].append(message)  # fmt: skip
        self._log.append(f"responses {kind}: {message}")

    def fail_next(self, n: int = 1, status: int = 500) -> None:
        """The next ``n`` requests answer HTTP ``status`` (a server error by default)."""
        self._fail_next += [status] * n

    @property
    def base_url(self) -> str:
        """What the SDK's ``base_url`` (and ``OPENAI_BASE_URL``) takes: ``http://host:port/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    async def start(self) -> None:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/v1/responses", self._create)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ResponsesSimulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _unknown(self, request: web.Request) -> web.Response:
        self.record("violation", f"{request.method} {request.path}: not an endpoint of the Responses API (HTTP 404)")
        return _error(404, "invalid_request_error", f"Invalid URL ({request.method} {request.path})")

    def check_request(self, body: Any) -> list[str]:
        """What the real API would refuse in a request body (empty: nothing)."""
        if not isinstance(body, dict):
            return ["the body is not a JSON object"]
        problems: list[str] = []
        try:
            _request_adapter().validate_python(body)
        except pydantic.ValidationError as exc:
            problems += [f"{'.'.join(map(str, e['loc']))}: {e['msg']}"[:300] for e in exc.errors()[:5]]
        problems += [f"unknown parameter {p!r}" for p in unknown_keys(body, ResponseCreateParamsNonStreaming)]
        if body.get("stream"):
            problems.append("stream=true is not simulated (the analysis reads whole responses)")
        for key in ("model", "input"):
            if key not in body:
                problems.append(f"missing required parameter {key!r}")
        fmt = (body.get("text") or {}).get("format") or {}
        if fmt.get("type") == "json_schema":
            schema = fmt.get("schema")
            if fmt.get("strict") is not True:
                problems.append("text.format.strict must be true (structured outputs)")
            if not isinstance(schema, dict) or schema.get("type") != "object":
                problems.append("text.format.schema must be a JSON Schema object with type object")
            else:
                problems += _strict_problems(schema, "text.format.schema")
        return problems

    async def _create(self, request: web.Request) -> web.Response:
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.record("violation", "request with a wrong API key (HTTP 401)")
            return _error(401, "invalid_request_error", "Incorrect API key provided")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            self.record("violation", "a body that is not JSON")
            return _error(400, "invalid_request_error", "We could not parse the JSON body of your request.")
        self.requests.append(body)
        problems = self.check_request(body)
        if problems:
            for p in problems:
                self.record("violation", p)
            return _error(400, "invalid_request_error", "; ".join(problems))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        status = self._fail_next.pop(0) if self._fail_next else self.always_fail
        if status is not None:
            return _error(status, "server_error", f"The server had an error (simulated HTTP {status}).")
        try:
            answer = self._answer(body)
        except Exception as exc:  # the simulator's own bug: recorded, and the test fails
            self.record("internal_error", repr(exc))
            return _error(500, "server_error", "simulator error")
        try:
            extras = _extras(Response.model_validate(answer), "")
        except pydantic.ValidationError as exc:
            self.record("server_violation", f"answer is not a Response: {exc.errors()[0]}"[:500])
        else:
            for path in extras:
                self.record("server_violation", f"answer has a key the Response type does not declare: {path}")
        self.answers.append(answer)
        return web.json_response(answer, dumps=lambda v: orjson.dumps(v).decode())

    def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        text_in = _input_text(body) + "\n" + str(body.get("instructions") or "")
        words = transcript_words(_input_text(body))
        fmt = (body.get("text") or {}).get("format") or {"type": "text"}
        if fmt["type"] == "json_schema":
            output = orjson.dumps(satisfying(fmt["schema"], words, self.overrides)).decode()
        elif fmt["type"] == "json_object":
            output = "{}"
        else:
            output = " ".join(words[:20]) or "OK."
        n = next(self._ids)
        input_tokens = max(1, len(text_in) // 4)
        cached = (input_tokens // 2) if n > 1 else 0  # the instructions repeat: a prompt cache would hit
        output_tokens = max(1, len(output) // 4)
        return {
            "id": f"resp_sim{n:08d}",
            "object": "response",
            "created_at": float(int(time.time())),
            "status": "completed",
            "model": body["model"],
            "output": [{
                "id": f"msg_sim{n:08d}", "type": "message", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": output, "annotations": [], "logprobs": []}],
            }],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "text": {"format": fmt},
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "metadata": body.get("metadata") or {},
            "temperature": 1.0,
            "top_p": 1.0,
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens,
            },
        }


def _strict_problems(node: Any, path: str) -> list[str]:
    """What strict structured outputs refuse in a schema: an object without
    ``additionalProperties: false`` or with a property not in ``required``."""
    if not isinstance(node, dict):
        return []
    found: list[str] = []
    types = node.get("type")
    types = [types] if isinstance(types, str) else (types or [])
    if "object" in types or "properties" in node:
        props = node.get("properties") or {}
        if node.get("additionalProperties") is not False:
            found.append(f"{path}: additionalProperties must be false in strict mode")
        if sorted(node.get("required") or []) != sorted(props):
            found.append(f"{path}: every property must be required in strict mode")
        for k, v in props.items():
            found += _strict_problems(v, f"{path}.properties.{k}")
    if isinstance(node.get("items"), dict):
        found += _strict_problems(node["items"], f"{path}.items")
    for i, sub in enumerate(node.get("anyOf") or []):
        found += _strict_problems(sub, f"{path}.anyOf[{i}]")
    for name in ("$defs", "definitions"):
        for k, v in (node.get(name) or {}).items():
            found += _strict_problems(v, f"{path}.{name}.{k}")
    return found


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": None}}, status=status)
