"""Dialtone's bus contract.

Every service imports its subjects, message types and the audio frame format from here, so the
code and the contract cannot drift apart. The contract is versioned: subjects carry ``v1`` and every
JSON message carries ``"v": 1``.
"""

from dialtone_proto import subjects
from dialtone_proto.calls import CallAnswer, CallOffer, CallPrepare, CallRecord, GatewayReady
from dialtone_proto.evals import EvalAccepted, EvalCallResult, EvalProgress, EvalStart
from dialtone_proto.events import (
    EVENT_TYPES,
    STREAM_NAME,
    STREAM_SUBJECTS,
    AgentChanged,
    CallAnalyzed,
    CallEnded,
    CallMetric,
    CallStarted,
    CallStatus,
    CallTransferred,
    Event,
    OutcomeSet,
    ToolCalled,
    TranscriptLine,
    TurnMeasured,
    UsageReported,
    decode_event,
    encode_event,
)
from dialtone_proto.frames import Frame, FrameError, Kind, decode_frame, encode_frame
from dialtone_proto.tools import ToolAction, ToolCallReply, ToolCallRequest, ToolCatalog, ToolSpec

PROTOCOL_VERSION = 1

__all__ = [
    "EVENT_TYPES",
    "PROTOCOL_VERSION",
    "STREAM_NAME",
    "STREAM_SUBJECTS",
    "AgentChanged",
    "CallAnalyzed",
    "CallAnswer",
    "CallPrepare",
    "CallMetric",
    "CallStatus",
    "CallTransferred",
    "CallEnded",
    "CallOffer",
    "CallRecord",
    "GatewayReady",
    "CallStarted",
    "EvalAccepted",
    "EvalCallResult",
    "EvalProgress",
    "EvalStart",
    "Event",
    "Frame",
    "FrameError",
    "Kind",
    "OutcomeSet",
    "ToolAction",
    "ToolCallReply",
    "ToolCallRequest",
    "ToolCalled",
    "ToolCatalog",
    "ToolSpec",
    "TranscriptLine",
    "TurnMeasured",
    "UsageReported",
    "decode_event",
    "decode_frame",
    "encode_event",
    "encode_frame",
    "subjects",
]
