"""NATS connection and JetStream helpers."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from dialtone_proto import STREAM_NAME, STREAM_SUBJECTS, subjects
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue

from dialtone_common.nats_auth import inbox_prefix

log = logging.getLogger(__name__)


async def connect(
    servers: list[str] | str, name: str, *, user: str | None = None, password: str | None = None,
    connect_timeout: float = 5.0,
) -> Client:
    """Connect with unlimited reconnects so a NATS restart is ridden out, not fatal.

    ``user`` and ``password``: this service's NATS user (``NATS_USER`` / ``NATS_PASSWORD``, see
    ``dialtone_common.nats_auth``); its replies then arrive under its own inbox prefix. Neither:
    connect without credentials (a NATS server that asks for none). The password is never logged.

    Raises:
        ValueError: only one of ``user`` and ``password``.
        PermissionError: the server refused the credentials (or asks for some and none were given).
    """
    if bool(user) != bool(password):
        raise ValueError("a NATS user needs a password, and a password a user")
    refused = asyncio.Event()
    who = f"the user {user!r}" if user else "a connection without credentials (NATS_USER unset)"

    async def on_error(exc: Exception) -> None:
        if "authorization violation" in str(exc).lower():
            refused.set()
            log.error("NATS refused %s: check NATS_USER and NATS_PASSWORD", who)
        else:
            log.warning("nats error: %s", exc)

    async def on_disconnect() -> None:
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    nc = Client()
    # A server that is down is waited for (forever, as a restart is), but one that refuses the
    # credentials is final: fail at once with a clear error instead of retrying.
    connecting = asyncio.ensure_future(nc.connect(
        servers=servers,
        name=name,
        connect_timeout=connect_timeout,  # type: ignore[arg-type]  # nats-py annotates int; it takes seconds
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,  # type: ignore[arg-type]  # likewise
        allow_reconnect=True,
        pending_size=64 * 1024 * 1024,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        user=user,
        password=password,
        inbox_prefix=inbox_prefix(user) if user else "_INBOX",
    ))
    waiting = asyncio.ensure_future(refused.wait())
    try:
        await asyncio.wait([connecting, waiting], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
        if not connecting.done():
            connecting.cancel()
            with contextlib.suppress(BaseException):
                await connecting
    if connecting.cancelled() or connecting.exception() is not None:
        with contextlib.suppress(Exception):
            await nc.close()
        if refused.is_set():
            raise PermissionError(f"NATS refused {who}: check NATS_USER and NATS_PASSWORD")
        connecting.result()  # the connection's own error
    return nc


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


async def pull_consumer(js: JetStreamContext, config: ConsumerConfig) -> JetStreamContext.PullSubscription:
    """Bind to the durable pull consumer ``config.durable_name`` of the call event stream, first
    created or updated to ``config``. Binding alone would keep the consumer as its first service
    made it: a setting changed since (an ack wait, the batches in flight) would never apply. A
    change JetStream cannot make in place (the filter, where delivery starts) is logged, and the
    consumer is used as it is."""
    durable = config.durable_name
    assert durable and config.filter_subject
    config.name = durable
    try:
        await js.add_consumer(STREAM_NAME, config)
    except BadRequestError as exc:
        log.warning("consumer %s kept as it is (%s)", durable, exc.description)
    return await js.pull_subscribe(config.filter_subject, durable=durable, stream=STREAM_NAME, config=config)
