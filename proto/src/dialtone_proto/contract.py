"""Check any message seen on the bus against the contract.

The contract test subscribes to ``>`` during a real call and passes every message here, so a
service that publishes something the contract does not describe fails the build.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from dialtone_proto import subjects
from dialtone_proto.calls import CallAnswer, CallOffer, CallPrepare, CallRecord, GatewayReady
from dialtone_proto.evals import EvalAccepted, EvalProgress, EvalStart
from dialtone_proto.events import STREAM_NAME, decode_event
from dialtone_proto.frames import TAP_IN, FrameError, Kind, decode_frame, decode_tap
from dialtone_proto.live import LiveCall
from dialtone_proto.tools import ToolCallReply, ToolCallRequest, ToolCatalog

_REPLIES: dict[str, type[BaseModel]] = {
    "call.answer": CallAnswer,
    "call.record": CallRecord,  # a KV get of a call record (JetStream direct get)
    "gateway.ready": GatewayReady,
    "tools.catalog": ToolCatalog,
    "tools.result": ToolCallReply,
    "eval.accepted": EvalAccepted,
}
_IN_KINDS = {Kind.AUDIO, Kind.MARK, Kind.DTMF, Kind.STOP, Kind.MOVED}
_OUT_KINDS = {Kind.AUDIO, Kind.MARK, Kind.CLEAR, Kind.HANGUP, Kind.HEARTBEAT, Kind.HANDOFF}


class ContractError(ValueError):
    """A bus message that the contract does not describe."""


def check_message(subject: str, data: bytes, headers: dict[str, str] | None = None) -> str:
    """Validate one message; return what it is (e.g. ``"frame:AUDIO"``), raise ``ContractError``."""
    try:
        return _check(subject, data, headers or {})
    except (ValidationError, FrameError, subjects.InvalidCallId, orjson.JSONDecodeError) as exc:
        raise ContractError(f"{subject}: {exc}") from exc


def _check(subject: str, data: bytes, headers: dict[str, str]) -> str:
    parts = subject.split(".")
    if subject.startswith(f"$KV.{subjects.CALLS_BUCKET}.") and data:
        record = CallRecord.model_validate_json(data)
        if subject.split(".", 2)[2] != record.call_id:
            raise ContractError(f"{subject}: record of call {record.call_id}")
        return "kv:call.record"
    if subject.startswith(("$JS.", "$SRV.", "$KV.", "$O.")):
        return "nats-internal"
    if subject.startswith("_INBOX.") or subject.startswith("$JS.ACK."):
        if not data or data.startswith(b"+ACK") or data.startswith(b'{"stream"'):
            return "nats-reply"
        body = orjson.loads(data)
        model = _REPLIES.get(str(body.get("type"))) if isinstance(body, dict) else None
        if model is None and isinstance(body, dict) and str(body.get("type", "")).startswith("io.nats."):
            return "nats-reply"  # a JetStream API answer (e.g. a KV get that found no record)
        if model is None:
            if isinstance(body, dict) and ("stream" in body or "error" in body and "type" not in body):
                return "nats-reply"  # JetStream publish ack / API error
            raise ContractError(f"{subject}: reply of unknown type {body!r:.200}")
        model.model_validate_json(data)
        return f"reply:{body['type']}"
    if parts[:2] != ["dt", "v1"]:
        raise ContractError(f"{subject}: not a dt.v1 subject")
    if subject in (subjects.CALL_OFFER, subjects.CALL_OFFER_ANY) or (
        len(parts) == 5 and subject.startswith(subjects.CALL_OFFER + ".")
    ):
        CallOffer.model_validate_json(data)
        return "call.offer"
    if subject == subjects.CALL_PREPARE:
        CallPrepare.model_validate_json(data)
        return "call.prepare"
    if subject in (subjects.TOOLS_CALL,):
        ToolCallRequest.model_validate_json(data)
        return "tools.call"
    if subject == subjects.TOOLS_CATALOG:
        return "tools.catalog-request"
    if subject == subjects.EVAL_START:
        EvalStart.model_validate_json(data)
        return "eval.start"
    if len(parts) == 5 and parts[2:4] == ["eval", "progress"]:
        progress = EvalProgress.model_validate_json(data)
        if progress.run_id != parts[4]:
            raise ContractError(f"{subject}: progress of run {progress.run_id}")
        return "eval.progress"
    if subject == subjects.GATEWAYS_READY:
        if data:
            raise ContractError(f"{subject}: the question has no body")
        return "gateways.ready-request"
    if len(parts) == 6 and parts[2] == "call" and parts[5] in ("in", "out"):
        subjects.check_call_id(parts[3])
        subjects.check_stream_key(parts[4])
        frame = decode_frame(data)
        allowed = _IN_KINDS if parts[5] == "in" else _OUT_KINDS
        if frame.kind not in allowed:
            raise ContractError(f"{subject}: {frame.kind.name} not allowed on {parts[5]}")
        if frame.kind is not Kind.AUDIO:
            frame.json()
        return f"frame:{parts[5]}:{frame.kind.name}"
    if len(parts) == 6 and parts[2] == "call" and parts[5] == "rec":
        subjects.check_call_id(parts[3])
        subjects.check_stream_key(parts[4])
        for side, _at, frame in decode_tap(data):
            allowed = _IN_KINDS if side == TAP_IN else _OUT_KINDS
            if frame.kind not in allowed:
                raise ContractError(f"{subject}: {frame.kind.name} not allowed on {'in' if side == TAP_IN else 'out'}")
        return "frame:rec"
    if len(parts) == 5 and parts[2] == "events":
        event = decode_event(data)
        if event.subject != subject:
            raise ContractError(f"{subject}: event {event.type} belongs on {event.subject}")
        if headers.get("Nats-Msg-Id") not in (None, event.id):
            raise ContractError(f"{subject}: Nats-Msg-Id {headers.get('Nats-Msg-Id')} != id {event.id}")
        if "Nats-Msg-Id" not in headers:
            raise ContractError(f"{subject}: event published without Nats-Msg-Id")
        return f"event:{event.type}"
    if len(parts) == 4 and parts[2] == "live":
        LiveCall.model_validate_json(data)
        return "live"
    raise ContractError(f"{subject}: no such subject in the contract (stream {STREAM_NAME})")


def describe() -> dict[str, Any]:
    """The contract in one document (subjects and JSON Schemas), for `make` docs and reviewers."""
    from dialtone_proto.events import event_schema

    return {
        "subjects": {
            "offer": subjects.CALL_OFFER,
            "in": f"{subjects.PREFIX}.call.<call_id>.<stream_key>.in",
            "out": f"{subjects.PREFIX}.call.<call_id>.<stream_key>.out",
            "rec": f"{subjects.PREFIX}.call.<call_id>.<stream_key>.rec",
            "calls_bucket": subjects.CALLS_BUCKET,
            "events": subjects.EVENTS_ALL,
            "tools": [subjects.TOOLS_CATALOG, subjects.TOOLS_CALL],
            "eval": [subjects.EVAL_START, f"{subjects.PREFIX}.eval.progress.<run_id>"],
        },
        "events": event_schema(),
        "offer": CallOffer.model_json_schema(),
        "record": CallRecord.model_json_schema(),
        "answer": CallAnswer.model_json_schema(),
        "tool_request": ToolCallRequest.model_json_schema(),
        "tool_reply": ToolCallReply.model_json_schema(),
        "catalog": ToolCatalog.model_json_schema(),
        "eval_start": EvalStart.model_json_schema(),
        "eval_accepted": EvalAccepted.model_json_schema(),
        "eval_progress": EvalProgress.model_json_schema(),
    }
