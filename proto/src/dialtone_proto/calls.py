"""Calls: the record the signed webhook leaves, and the offer/answer that hands a call to a bridge.

A call's facts (who called whom, which agent, the variables of an outbound call) come only from
Twilio's signed voice webhook. The media-gateway keeps them as a ``CallRecord`` in the NATS KV
bucket ``subjects.CALLS_BUCKET`` until the call's media stream starts; the stream's own
``customParameters`` are never trusted. The record then says which gateway stream holds the call
and under which stream key, and a bridge takes an offer only when the record agrees with it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

_CALL_ID = r"^[A-Za-z0-9_-]{1,64}$"  # pydantic (Rust regex): $ is the very end
_KEY = r"^[A-Za-z0-9_-]{16,64}$"

Direction = Literal["inbound", "outbound"]


class GatewayReady(BaseModel):
    """A gateway's answer on ``subjects.GATEWAYS_READY``: it takes new streams (it is not draining)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    type: Literal["gateway.ready"] = "gateway.ready"
    gateway_id: str = Field(max_length=128)


class CallRecord(BaseModel):
    """The KV value of one call, written by the gateway.

    ``state`` moves ``pending`` (webhook answered) -> ``streaming`` (a stream holds the call) ->
    ``ended``, and never back, so a second stream for a call (a replayed upgrade, an attacker with
    the CallSid) is refused. A draining gateway moves a call to another gateway through
    ``streaming`` -> ``moving`` -> ``streaming``: ``move_id`` names the one stream URL issued for
    the move, the only one that may take the call in ``moving``; ``moved_from`` names the gateway it
    leaves; ``moved_seq``, ``moved_ts`` and
    ``moved_at`` say where the old stream stopped (next frame sequence, end of its caller audio on
    the call's media clock in ms, and when, in Unix seconds), so the new stream carries on the
    same sequence and clock. ``stream_key`` and ``epoch`` change when the gateway re-offers the call
    after losing its bridge; ``bridge_id`` names the one bridge that took the current offer (the
    gateway may send an offer twice, and two bridges may both see it). Every change is a
    compare-and-set on the KV revision.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    type: Literal["call.record"] = "call.record"
    call_id: str = Field(pattern=_CALL_ID)
    account_sid: str | None = None
    from_number: str | None = Field(default=None, max_length=64)
    to_number: str | None = Field(default=None, max_length=64)
    direction: Direction = "inbound"
    agent: str | None = Field(default=None, max_length=64)
    variables: dict[str, str] = Field(default_factory=dict)
    created_at: datetime
    state: Literal["pending", "streaming", "moving", "ended"] = "pending"
    stream_key: str | None = Field(default=None, pattern=_KEY)
    gateway_id: str | None = None
    epoch: int = Field(default=0, ge=0)
    bridge_id: str | None = None
    # The bridge that opened the call's model session at the voice webhook, before the stream: the
    # stream's gateway offers the call to it first.
    prepared_by: str | None = Field(default=None, max_length=128)
    # False when the agent that took the call says not to record it (agent.toml ``record = false``);
    # set by the bridge right after it takes the call, read by the recorder.
    record: bool = True
    move_id: str | None = Field(default=None, pattern=_KEY)
    moved_from: str | None = None
    moved_seq: int | None = Field(default=None, ge=0)
    moved_ts: int | None = Field(default=None, ge=0)
    moved_at: float | None = None

    def held_by(self, stream_key: str, epoch: int, bridge_id: str) -> bool:
        """Whether this record still gives the call to ``bridge_id`` under that key and epoch (an
        ended call still belongs to its last bridge; a re-keyed one belongs to someone else)."""
        return (self.stream_key, self.epoch, self.bridge_id) == (stream_key, epoch, bridge_id)


class CallOffer(BaseModel):
    """Sent by the media-gateway when a stream starts (``epoch`` 0) or when it re-offers a call
    whose bridge went silent (``epoch`` 1, 2, ...); one bridge of the queue group claims it.

    The caller's details are copied from the ``CallRecord``; a bridge takes the offer only by
    writing its own id into the record, which succeeds only for the record's current stream key
    and epoch and only for the first bridge (``CallBook.assign``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    type: Literal["call.offer"] = "call.offer"
    call_id: str = Field(pattern=_CALL_ID)
    stream_sid: str
    stream_key: str = Field(pattern=_KEY)
    epoch: int = Field(default=0, ge=0)
    account_sid: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    direction: Direction = "inbound"
    agent: str | None = None
    parameters: dict[str, str] = Field(default_factory=dict)
    gateway_id: str | None = None
    # The previous bridge handed the call over as it drained (a planned move, not a lost bridge):
    # the new one restores the conversation without the agent's "resumed" apology.
    handoff: bool = False

    def with_record(self, record: CallRecord) -> CallOffer:
        """This offer with the caller's details taken from the record (the trusted source)."""
        return self.model_copy(update={
            "account_sid": record.account_sid,
            "from_number": record.from_number,
            "to_number": record.to_number,
            "direction": record.direction,
            "agent": record.agent,
            "parameters": dict(record.variables),
        })


class CallPrepare(BaseModel):
    """The voice webhook of a call arrived (``dt.v1.calls.prepare``, to one bridge of the queue
    group): that bridge may open the model session for the call's agent while Twilio sets up the
    stream, and marks the call's record ``prepared_by`` itself. Nothing depends on it: an offer
    that reaches another bridge (or none prepared) is served as before."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    type: Literal["call.prepare"] = "call.prepare"
    call_id: str = Field(pattern=_CALL_ID)
    to_number: str | None = Field(default=None, max_length=64)
    agent: str | None = Field(default=None, max_length=64)


class CallAnswer(BaseModel):
    """A bridge's reply to an offer. ``accepted`` false carries a reason (e.g. draining)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    type: Literal["call.answer"] = "call.answer"
    call_id: str
    accepted: bool
    bridge_id: str
    agent: str | None = None
    reason: str | None = None
