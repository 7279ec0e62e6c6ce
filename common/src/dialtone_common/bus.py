"""NATS connection and JetStream helpers."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats
from dialtone_proto import STREAM_NAME, STREAM_SUBJECTS, subjects
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)


async def connect(servers: list[str] | str, name: str, *, connect_timeout: float = 5.0) -> Client:
    """Connect with unlimited reconnects so a NATS restart is ridden out, not fatal."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    async def on_disconnect() -> None:
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    return await nats.connect(
        servers=servers,
        name=name,
        connect_timeout=connect_timeout,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        allow_reconnect=True,
        pending_size=64 * 1024 * 1024,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )


async def close(nc: Client, timeout: float = 10.0) -> None:
    """Drain the connection (finish in-flight work), or just close it if NATS is already gone."""
    try:
        await asyncio.wait_for(nc.drain(), timeout)
    except Exception as exc:  # shutting down: the server may be down or reconnecting
        log.info("nats drain skipped (%s); closing", type(exc).__name__)
        with contextlib.suppress(Exception):
            await nc.close()


# A call record outlives the longest call Twilio allows (4 hours by default) with room to spare.
CALL_RECORD_TTL_S = 6 * 3600


async def ensure_calls_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    """The KV bucket of call records (``dialtone_proto.calls.CallRecord``); created if missing.
    Safe to call from every gateway and bridge at start-up."""
    config = KeyValueConfig(
        bucket=subjects.CALLS_BUCKET,
        description="Dialtone calls: the signed webhook's facts and the stream holding each call",
        history=1,
        ttl=CALL_RECORD_TTL_S,
        max_value_size=16 * 1024,
        storage=StorageType.FILE,
        replicas=replicas,
    )
    for attempt in range(20):
        try:
            try:
                return await js.create_key_value(config)
            except BadRequestError:  # it exists with other settings (an operator's): use it as it is
                return await js.key_value(subjects.CALLS_BUCKET)
        except Exception as exc:  # JetStream may still be electing a leader right after start
            if attempt == 19:
                raise
            log.info("waiting for JetStream (calls bucket): %s", exc)
            await asyncio.sleep(0.25)
    raise AssertionError("unreachable")


async def ensure_stream(js: JetStreamContext, replicas: int = 1) -> None:
    """Create (or update) the call event stream with ``replicas`` copies (``JETSTREAM_REPLICAS``).
    Safe to call from every service at start-up; an existing stream is updated to this count."""
    config = StreamConfig(
        name=STREAM_NAME,
        subjects=STREAM_SUBJECTS,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=7 * 24 * 3600,
        duplicate_window=10 * 60,
        num_replicas=replicas,
    )
    for attempt in range(20):
        try:
            try:
                await js.add_stream(config)
            except BadRequestError:
                await js.update_stream(config)
            return
        except Exception as exc:  # JetStream may still be electing a leader right after start
            if attempt == 19:
                raise
            log.info("waiting for JetStream: %s", exc)
            await asyncio.sleep(0.25)
