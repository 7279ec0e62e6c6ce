"""The official SDK's Realtime and GPT-Live event types used as a strict test oracle.

The ``openai`` pydantic models accept unknown keys (they land in ``model_extra``), so validating
alone would let a misspelt or beta-era field through. :func:`check_client_event` and
:func:`check_server_event` validate with ``TypeAdapter`` and then walk the result, rejecting any
extra key at any depth. The Realtime simulator and the end-to-end tests both use them;
:func:`check_live_client_event` and :func:`check_live_server_event` do the same with GPT-Live's
``openai.types.live`` (the GPT-Live simulator, the live engine's unit tests).

Most events of a call are flat and alike (50 audio appends a second per call): a flat event whose
keys, ``type`` and every constrained value equal those of one already found valid, and whose
free-form fields (plain ``str`` or ``int`` without constraints) hold values of the same Python type,
gets the same verdict, so it is not validated again (:func:`_shape`). That keeps validation on at
load (the bench's 300 calls) at a fraction of the cost.
"""

from __future__ import annotations

import functools
import typing
from typing import Any

import pydantic
from openai.types.live import ClientEvent as LiveClientEvent
from openai.types.live import ServerEvent as LiveServerEvent
from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent

__all__ = ["OracleError", "check_client_event", "check_live_client_event", "check_live_server_event", "check_server_event"]

_UNIONS: dict[str, Any] = {
    "client": RealtimeClientEvent, "server": RealtimeServerEvent,
    "live client": LiveClientEvent, "live server": LiveServerEvent,
}  # fmt: skip


class OracleError(ValueError):
    """An event the real API would reject.

    Attributes:
        code: the Realtime error code the real API answers with (``invalid_value`` or
            ``unknown_parameter``).
        param: dotted path of the offending field, when known.
    """

    def __init__(self, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.param = param


@functools.cache
def _adapter(kind: str) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(_UNIONS[kind])


def _extras(value: Any, path: str) -> list[str]:
    """Dotted paths of every key a model did not declare, at any depth."""
    found: list[str] = []
    if isinstance(value, pydantic.BaseModel):
        for key in value.model_extra or {}:
            found.append(f"{path}.{key}" if path else key)
        for name in type(value).model_fields:
            found += _extras(getattr(value, name), f"{path}.{name}" if path else name)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found += _extras(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            found += _extras(item, f"{path}.{key}")
    return found


@functools.cache
def _types(kind: str) -> frozenset[str]:
    """The ``type`` literals of every member of the client or server event union."""
    union = typing.get_args(_UNIONS[kind])[0]
    return frozenset(typing.get_args(m.model_fields["type"].annotation)[0] for m in typing.get_args(union))


@functools.cache
def _free_fields(kind: str, event_type: str) -> dict[str, tuple[type, ...]]:
    """The fields of an event type where any value of the declared Python type validates alike
    (``str``, ``int`` or their ``Optional``, with no constraint), with the types they take."""
    union = typing.get_args(_UNIONS[kind])[0]
    plain: dict[Any, tuple[type, ...]] = {str: (str,), int: (int,), str | None: (str, type(None)),
                                          int | None: (int, type(None))}  # fmt: skip
    for member in typing.get_args(union):
        if typing.get_args(member.model_fields["type"].annotation)[0] == event_type:
            return {name: plain[info.annotation] for name, info in member.model_fields.items()
                    if not info.metadata and info.alias in (None, name) and info.annotation in plain}  # fmt: skip
    return {}


_VALID_SHAPES: set[tuple] = set()
_MAX_SHAPES = 4096


def _shape(kind: str, event: dict) -> tuple | None:
    """What decides a flat event's verdict: its keys, the values of its constrained fields and the
    Python types of its free-form ones. None for an event with a nested value (always validated)."""
    free = _free_fields(kind, event["type"])
    parts: list[tuple] = []
    for key, value in event.items():
        if isinstance(value, dict | list):
            return None
        if type(value) in free.get(key, ()):  # exactly: a bool is no int here, a "5" no int
            parts.append((key, type(value)))
        else:
            parts.append((key, type(value), value))
    return (kind, *sorted(parts, key=lambda p: p[0]))


def _check(kind: str, event: dict) -> None:
    if not isinstance(event, dict):
        raise OracleError(f"{kind} event is not a JSON object", code="invalid_value")
    if event.get("type") not in _types(kind):
        raise OracleError(
            f"Invalid value: {event.get('type')!r}. Supported values are: {', '.join(sorted(_types(kind)))}.",
            code="invalid_value",
            param="type",
        )
    shape = _shape(kind, event)
    if shape is not None and shape in _VALID_SHAPES:
        return
    try:
        model = _adapter(kind).validate_python(event)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        raise OracleError(
            f"Invalid {kind} event {event.get('type')!r}: {exc.error_count()} error(s); "
            f"first at {param}: {first.get('msg')}",
            code="invalid_value",
            param=param,
        ) from exc
    extras = _extras(model, "")
    if extras:
        raise OracleError(
            f"Unknown parameter(s) in {kind} event {event.get('type')!r}: {', '.join(extras)}",
            code="unknown_parameter",
            param=extras[0],
        )
    if shape is not None and len(_VALID_SHAPES) < _MAX_SHAPES:
        _VALID_SHAPES.add(shape)


def check_client_event(event: dict) -> None:
    """Raise :class:`OracleError` (a ValueError) unless ``event`` is a valid GA client event."""
    _check("client", event)


def check_server_event(event: dict) -> None:
    """Raise :class:`OracleError` (a ValueError) unless ``event`` is a valid GA server event."""
    _check("server", event)


def check_live_client_event(event: dict) -> None:
    """Raise :class:`OracleError` unless ``event`` is a valid GPT-Live client event."""
    _check("live client", event)


def check_live_server_event(event: dict) -> None:
    """Raise :class:`OracleError` unless ``event`` is a valid GPT-Live server event."""
    _check("live server", event)
