"""The call records in NATS KV: what the signed webhook said, and which stream holds each call.

The media-gateway writes a ``CallRecord`` when Twilio's signed voice webhook arrives, claims it
for the one media stream that may carry the call, re-keys it when it re-offers the call to another
bridge, and marks it ended. Every change after the first write is a compare-and-set on the KV
revision, so two gateways (or a replayed upgrade racing the real one) can never both hold a call.
Bridges only read: an offer is taken only if the record confirms it.

A draining gateway moves a call to another gateway: ``start_move`` (streaming -> moving, naming
the move's stream URL), ``move_stopped`` (where its stream stopped), then the new gateway's
``claim_move`` (moving -> streaming, same stream key, epoch and bridge) or, if the move fails,
``cancel_move`` (back to streaming, the old stream keeps the call) or ``end``.

Errors::

    CallBookUnavailable   NATS or JetStream did not answer (a 503 to Twilio, a refused offer)
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import nats.errors
import nats.js.errors
from dialtone_proto import CallRecord, subjects
from nats.js.kv import KeyValue
from pydantic import ValidationError

log = logging.getLogger(__name__)

_TIMEOUT_ERRORS = (nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError)


class CallBookUnavailable(RuntimeError):
    """The KV store did not answer; nothing was decided."""


class CallBook:
    """Reads and changes call records. ``kv`` is the bucket from ``bus.ensure_calls_bucket``."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def get(self, call_id: str) -> CallRecord | None:
        """The record of ``call_id``, or None if there is none (or it is not a record)."""
        entry = await self._entry(call_id)
        return entry[0] if entry else None

    async def register(self, record: CallRecord) -> CallRecord:
        """Keep what a signed voice webhook said. The first webhook of a call wins: a second one
        (Twilio fetching it again, or a replay of a captured request, whose signed string can be
        re-cut into other parameters) changes nothing, and the record kept is returned."""
        subjects.check_call_id(record.call_id)
        for _ in range(3):
            entry = await self._entry(record.call_id)
            if entry is not None:
                return entry[0]
            try:
                await self._kv.create(record.call_id, record.model_dump_json().encode())
                return record
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another gateway wrote first: keep theirs
            except _TIMEOUT_ERRORS as exc:
                raise CallBookUnavailable(str(exc)) from exc
        raise CallBookUnavailable(f"call {record.call_id}: record kept changing")

    async def claim(self, call_id: str, stream_key: str, gateway_id: str) -> CallRecord | None:
        """Make the stream with ``stream_key`` the one that holds the call (pending -> streaming).

        Returns:
            The claimed record, or None when there is no record or a stream already held the call.
        """
        return await self._change(
            call_id, lambda r: r.state == "pending",
            state="streaming", stream_key=stream_key, gateway_id=gateway_id, epoch=0,
        )

    async def prepared(self, call_id: str, bridge_id: str) -> CallRecord | None:
        """``bridge_id`` opened the model session of a call whose stream has not started yet."""
        return await self._change(call_id, lambda r: r.state == "pending" and r.prepared_by is None,
                                  prepared_by=bridge_id)

    async def rekey(self, call_id: str, old_key: str, new_key: str, epoch: int, gateway_id: str) -> CallRecord | None:
        """Re-offering: the stream keeps the call under a new key and epoch (the old key is dead)."""
        return await self._change(
            call_id, lambda r: r.state == "streaming" and r.stream_key == old_key,
            stream_key=new_key, epoch=epoch, gateway_id=gateway_id, bridge_id=None,
        )

    async def assign(self, call_id: str, stream_key: str, epoch: int, bridge_id: str) -> CallRecord | None:
        """A bridge takes the offer of ``stream_key`` at ``epoch``; None if the record names
        another key or epoch, or another bridge already took it."""
        return await self._change(
            call_id,
            lambda r: (r.state, r.stream_key, r.epoch) == ("streaming", stream_key, epoch)
            and r.bridge_id in (None, bridge_id),
            bridge_id=bridge_id,
        )

    async def start_move(self, call_id: str, stream_key: str, gateway_id: str, move_id: str) -> CallRecord | None:
        """The stream of ``gateway_id`` that holds the call under ``stream_key`` moves it: only the
        stream URL issued with ``move_id`` may take it now."""
        return await self._change(
            call_id, lambda r: (r.state, r.stream_key, r.gateway_id) == ("streaming", stream_key, gateway_id),
            state="moving", move_id=move_id, moved_from=gateway_id, moved_seq=None, moved_ts=None, moved_at=None,
        )

    async def move_stopped(self, call_id: str, move_id: str, seq: int, ts: int, at: float) -> CallRecord | None:
        """The moving call's old stream stopped at frame ``seq`` and media time ``ts`` (ms), at
        ``at`` (Unix seconds): the new stream carries on from there."""
        return await self._change(
            call_id, lambda r: (r.state, r.move_id) == ("moving", move_id),
            moved_seq=seq, moved_ts=ts, moved_at=at,
        )

    async def cancel_move(self, call_id: str, move_id: str) -> CallRecord | None:
        """The move failed before Twilio left the old stream: it keeps the call (moving -> streaming)."""
        return await self._change(
            call_id, lambda r: (r.state, r.move_id) == ("moving", move_id), state="streaming", move_id=None,
        )

    async def claim_move(self, call_id: str, move_id: str, gateway_id: str) -> CallRecord | None:
        """The stream opened on the URL issued for the move takes the call (moving -> streaming),
        under the same stream key and epoch, for the bridge that holds it. None unless the record
        is moving with this ``move_id`` and its old stream has stopped (``move_stopped``; Twilio
        stops it before it opens the new one, and the new stream carries on from there): no
        other URL can claim a moving call, and a move URL claims nothing else."""
        return await self._change(
            call_id, lambda r: (r.state, r.move_id) == ("moving", move_id) and r.moved_at is not None,
            state="streaming", move_id=None, gateway_id=gateway_id,
        )

    async def do_not_record(self, call_id: str, stream_key: str, epoch: int, bridge_id: str) -> CallRecord | None:
        """The agent of ``bridge_id``'s call says not to record it: the recorder drops what it has."""
        return await self._change(
            call_id, lambda r: r.held_by(stream_key, epoch, bridge_id), record=False,
        )

    async def touch(self, call_id: str, stream_key: str) -> CallRecord | None:
        """Rewrite the record unchanged, so a call longer than the bucket's TTL keeps it."""
        return await self._change(call_id, lambda r: r.stream_key == stream_key)

    async def end(self, call_id: str, stream_keys: set[str]) -> CallRecord | None:
        """The stream is over (it held the call under one of ``stream_keys``): no stream may take
        the call again."""
        return await self._change(call_id, lambda r: r.stream_key in stream_keys, state="ended")

    async def _change(self, call_id: str, allowed, **changes: object) -> CallRecord | None:
        for _ in range(5):
            entry = await self._entry(call_id)
            if entry is None or not allowed(entry[0]):
                return None
            record = entry[0].model_copy(update=changes)
            try:
                await self._kv.update(call_id, record.model_dump_json().encode(), last=entry[1])
                return record
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            except _TIMEOUT_ERRORS as exc:
                raise CallBookUnavailable(str(exc)) from exc
        return None

    async def _entry(self, call_id: str) -> tuple[CallRecord, int] | None:
        try:
            entry = await self._kv.get(subjects.check_call_id(call_id))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        except _TIMEOUT_ERRORS as exc:
            raise CallBookUnavailable(str(exc)) from exc
        if not entry.value:
            return None
        try:
            return CallRecord.model_validate_json(entry.value), int(entry.revision or 0)
        except ValidationError:
            log.error("call record of %s is not a CallRecord: ignored", call_id)
            return None


def new_record(call_id: str, **fields: object) -> CallRecord:
    """A pending record dated now."""
    return CallRecord(call_id=call_id, created_at=datetime.now(UTC), **fields)
