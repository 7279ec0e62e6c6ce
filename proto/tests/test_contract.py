"""``contract.check_message``: what the services publish passes, anything else fails the build."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from dialtone_proto import (
    CallAnswer,
    CallEnded,
    CallOffer,
    CallRecord,
    CallStarted,
    GatewayReady,
    ToolCallReply,
    ToolCallRequest,
    ToolCatalog,
    ToolSpec,
    TranscriptLine,
    encode_event,
    subjects,
)
from dialtone_proto.contract import ContractError, check_message
from dialtone_proto.evals import EvalAccepted, EvalCallResult, EvalProgress, EvalStart
from dialtone_proto.frames import Kind, encode_control, encode_frame
from dialtone_proto.live import LiveCall
from dialtone_proto.tools import ToolAction

pytestmark = pytest.mark.unit

CALL = "CA" + "1" * 32
AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
INBOX = "_INBOX.abcdef.12"
KEY = "k" * 22

STARTED = CallStarted(id=f"{CALL}-1", call_id=CALL, at=AT, agent="support")
LINE = TranscriptLine(
    id=f"{CALL}-2", call_id=CALL, at=AT, item_id="i1", seq=0, role="agent", text="Hello", agent="support"
)
ENDED = CallEnded(id=f"{CALL}-9", call_id=CALL, at=AT, reason="caller_hangup")


def _json(model) -> bytes:
    return model.model_dump_json().encode()


ACCEPTED = [
    (
        subjects.CALL_OFFER,
        _json(CallOffer(call_id=CALL, stream_sid="MZ1", stream_key=KEY, from_number="+1555", to_number="+1500",
                        agent="support")),
        None,
        "call.offer",
    ),
    (subjects.call_in(CALL, KEY), encode_frame(Kind.AUDIO, 0, 0, b"\xff" * 160), None, "frame:in:AUDIO"),
    (subjects.call_in(CALL, KEY), encode_control(Kind.MARK, 1, 0, {"name": "a3"}), None, "frame:in:MARK"),
    (subjects.call_in(CALL, KEY), encode_control(Kind.DTMF, 2, 0, {"digit": "5"}), None, "frame:in:DTMF"),
    (subjects.call_in(CALL, KEY), encode_control(Kind.STOP, 3, 0, {"reason": "stop"}), None, "frame:in:STOP"),
    (subjects.GATEWAYS_READY, b"", None, "gateways.ready-request"),
    ("_INBOX.gateway.abc.1", _json(GatewayReady(gateway_id="media-gateway-2")), None, "reply:gateway.ready"),
    (subjects.call_in(CALL, KEY), encode_control(Kind.MOVED, 4, 980, {"from": "gw-a", "to": "gw-b", "stopped_ts": 500,
                                                                       "gap_ms": 480}), None, "frame:in:MOVED"),
    (subjects.call_out(CALL, KEY), encode_frame(Kind.AUDIO, 0, 10, b"\x7f" * 800), None, "frame:out:AUDIO"),
    (subjects.call_out(CALL, KEY), encode_control(Kind.MARK, 1, 10, {"name": "a0"}), None, "frame:out:MARK"),
    (subjects.call_out(CALL, KEY), encode_control(Kind.CLEAR, 2, 10, {}), None, "frame:out:CLEAR"),
    (subjects.call_out(CALL, KEY), encode_control(Kind.HANGUP, 3, 10, {"reason": "goodbye"}), None, "frame:out:HANGUP"),
    (subjects.call_out(CALL, KEY), encode_control(Kind.HEARTBEAT, 4, 10, {"bridge": "b1"}), None,
     "frame:out:HEARTBEAT"),
    (f"$KV.{subjects.CALLS_BUCKET}.{CALL}", _json(CallRecord(call_id=CALL, created_at=AT, state="streaming",
                                                             stream_key=KEY)), None, "kv:call.record"),
    (f"$KV.{subjects.CALLS_BUCKET}.{CALL}", _json(CallRecord(call_id=CALL, created_at=AT, state="moving", stream_key=KEY,
                                                             move_id="m" * 22, moved_from="gw-a", moved_seq=12,
                                                             moved_ts=240, moved_at=1.5)), None, "kv:call.record"),
    (STARTED.subject, encode_event(STARTED), {"Nats-Msg-Id": STARTED.id}, "event:call.started"),
    (LINE.subject, encode_event(LINE), {"Nats-Msg-Id": LINE.id}, "event:transcript.line"),
    (ENDED.subject, encode_event(ENDED), {"Nats-Msg-Id": ENDED.id, "Other": "x"}, "event:call.ended"),
    (
        subjects.TOOLS_CALL,
        _json(ToolCallRequest(call_id=CALL, tool_call_id="call_1", name="lookup_customer", arguments="{}", agent="s")),
        None,
        "tools.call",
    ),
    (subjects.TOOLS_CATALOG, b"", None, "tools.catalog-request"),
    (INBOX, _json(CallAnswer(call_id=CALL, accepted=True, bridge_id="b1", agent="support")), None, "reply:call.answer"),
    (INBOX, _json(CallAnswer(call_id=CALL, accepted=False, bridge_id="b1", reason="draining")), None, "reply:call.answer"),
    (
        INBOX,
        _json(ToolCatalog(tools=[ToolSpec(name="end_call", description="Hang up.", parameters={"type": "object"}, timeout_s=5)])),
        None,
        "reply:tools.catalog",
    ),
    (
        INBOX,
        _json(ToolCallReply(ok=True, output={"plan": "pro"}, actions=[ToolAction(action="set_outcome", value="ok")])),
        None,
        "reply:tools.result",
    ),
    (INBOX, _json(ToolCallReply(ok=False, output={"error": "timeout"}, error="timeout")), None, "reply:tools.result"),
    (INBOX, b'{"stream":"DIALTONE_EVENTS","seq":7}', None, "nats-reply"),
    (
        subjects.live(CALL),
        _json(LiveCall(call_id=CALL, agent="support", started_at=AT, bridge_id="b1", state="speaking")),
        None,
        "live",
    ),
    (subjects.EVAL_START, _json(EvalStart(agent="support", runs=3)), None, "eval.start"),
    (INBOX, _json(EvalAccepted(accepted=True, run_id="r1", total=3)), None, "reply:eval.accepted"),
    (INBOX, _json(EvalAccepted(accepted=False, reason="no scenarios")), None, "reply:eval.accepted"),
    (
        subjects.eval_progress("r1"),
        _json(EvalProgress(run_id="r1", status="running", total=3, done=1, passed=0, result=EvalCallResult(
            scenario="support/transfer", engine="realtime", run=1, call_sid=CALL, passed=False,
            failures=["transferred: expected transferred, not transferred"]))),
        None,
        "eval.progress",
    ),
]


@pytest.mark.parametrize(("subject", "data", "headers", "what"), ACCEPTED, ids=[a[3] + f"-{i}" for i, a in enumerate(ACCEPTED)])
def test_what_the_services_publish_is_accepted(subject: str, data: bytes, headers, what: str) -> None:
    assert check_message(subject, data, headers) == what


REJECTED = [
    pytest.param(STARTED.subject.replace("call_started", "call_ended"), encode_event(STARTED), {"Nats-Msg-Id": STARTED.id}, id="event-wrong-type-subject"),
    pytest.param(subjects.event("CAother", "call.started"), encode_event(STARTED), {"Nats-Msg-Id": STARTED.id}, id="event-other-call-subject"),
    pytest.param(STARTED.subject, encode_event(STARTED), None, id="event-without-msg-id"),
    pytest.param(STARTED.subject, encode_event(STARTED), {}, id="event-empty-headers"),
    pytest.param(STARTED.subject, encode_event(STARTED), {"Nats-Msg-Id": f"{CALL}-2"}, id="event-msg-id-mismatch"),
    pytest.param(STARTED.subject, encode_event(STARTED)[:-1], {"Nats-Msg-Id": STARTED.id}, id="event-truncated-json"),
    pytest.param(subjects.call_in(CALL, KEY), encode_control(Kind.CLEAR, 0, 0, {}), None, id="clear-on-in"),
    pytest.param(subjects.call_in(CALL, KEY), encode_control(Kind.HANGUP, 0, 0, {}), None, id="hangup-on-in"),
    pytest.param(subjects.call_out(CALL, KEY), encode_control(Kind.DTMF, 0, 0, {"digit": "1"}), None, id="dtmf-on-out"),
    pytest.param(subjects.call_out(CALL, KEY), encode_control(Kind.STOP, 0, 0, {}), None, id="stop-on-out"),
    pytest.param(subjects.call_in(CALL, KEY), encode_control(Kind.HEARTBEAT, 0, 0, {}), None, id="heartbeat-on-in"),
    pytest.param(subjects.call_out(CALL, KEY), encode_control(Kind.MOVED, 0, 0, {}), None, id="moved-on-out"),
    pytest.param(subjects.GATEWAYS_READY, b'{"ready": true}', None, id="gateways-ready-with-a-body"),
    pytest.param(f"dt.v1.call.{CALL}.in", encode_frame(Kind.AUDIO, 0, 0, b"\xff"), None, id="frame-without-key"),
    pytest.param(f"$KV.{subjects.CALLS_BUCKET}.CA2", _json(CallRecord(call_id=CALL, created_at=AT)), None,
                 id="record-of-another-call"),
    pytest.param(subjects.call_out(CALL, KEY), encode_frame(Kind.MARK, 0, 0, b"a0"), None, id="mark-not-json"),
    pytest.param(subjects.call_in(CALL, KEY), b"\x02\x01" + bytes(10), None, id="frame-version-2"),
    pytest.param(subjects.call_in(CALL, KEY), b"\x01\x01", None, id="frame-short"),
    pytest.param(f"dt.v1.call.{CALL}.sideways", encode_frame(Kind.AUDIO, 0, 0), None, id="call-unknown-direction"),
    pytest.param("dt.v1.call.CA*.in", encode_frame(Kind.AUDIO, 0, 0), None, id="call-wildcard-id"),
    pytest.param("dt.v1.calls.answer", b"{}", None, id="unknown-dt-subject"),
    pytest.param("dt.v2.call.CA1.in", encode_frame(Kind.AUDIO, 0, 0), None, id="other-version"),
    pytest.param("audio.CA1", encode_frame(Kind.AUDIO, 0, 0), None, id="foreign-subject"),
    pytest.param(subjects.CALL_OFFER, b'{"call_id":"CA1","stream_sid":"MZ","extra":1}', None, id="offer-extra-key"),
    pytest.param(subjects.CALL_OFFER, b'{"call_id":"CA.1","stream_sid":"MZ"}', None, id="offer-bad-call-id"),
    pytest.param(subjects.TOOLS_CALL, b'{"call_id":"CA1"}', None, id="tool-request-incomplete"),
    pytest.param(INBOX, b'{"type":"call.whatever"}', None, id="reply-unknown-type"),
    pytest.param(INBOX, b'{"type":"call.answer","call_id":"CA1"}', None, id="reply-incomplete"),
    pytest.param(INBOX, b'{"type":"tools.result","ok":true,"output":1,"py/object":"x"}', None, id="reply-extra-key"),
    pytest.param(subjects.live(CALL), b'{"call_id":"CA1"}', None, id="live-incomplete"),
    pytest.param(subjects.EVAL_START, b'{"runs":500}', None, id="eval-start-too-many-runs"),
    pytest.param(subjects.eval_progress("r2"), _json(EvalProgress(run_id="r1", status="running", total=1, done=0,
                                                                  passed=0)), None, id="eval-progress-other-run"),
]


@pytest.mark.parametrize(("subject", "data", "headers"), REJECTED)
def test_what_the_contract_does_not_describe_is_rejected(subject: str, data: bytes, headers) -> None:
    with pytest.raises(ContractError):
        check_message(subject, data, headers)
