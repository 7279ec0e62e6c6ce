"""The media-gateway's HTTP and WebSocket surface: Twilio's only contact."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import nats.errors
from dialtone_common import bus
from dialtone_common.callbook import CallBook, CallBookUnavailable, new_record
from dialtone_proto import CallPrepare, CallRecord, GatewayReady, subjects
from dialtone_proto.events import CallStatus, encode_event
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import PlainTextResponse, Response
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NoStreamResponseError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from dialtone_gateway import metrics as m
from dialtone_gateway.forms import BodyRejected, read_form
from dialtone_gateway.line import TwilioLine
from dialtone_gateway.settings import GatewaySettings
from dialtone_gateway.signatures import SignatureChecker
from dialtone_gateway.streams import MediaStream, StreamContext
from dialtone_gateway.twiml import connect_stream

log = logging.getLogger("dialtone.gateway")

# Twilio's form parameters are CamelCase names. Anything else is refused: the signed string is URL
# and form concatenated without separators, so a replayed request could otherwise move characters
# between a query value and an invented form key and still carry a valid signature.
_TWILIO_PARAM = re.compile(r"[A-Z][A-Za-z0-9]{0,63}")


async def _prepare(nc: Client, record: CallRecord) -> None:
    """Tell one bridge that a call is coming, so its model session opens during the stream's set-up.
    Fire and forget: the webhook's answer never waits on it, and a lost message only costs time."""
    prepare = CallPrepare(call_id=record.call_id, to_number=record.to_number, agent=record.agent)
    with contextlib.suppress(nats.errors.Error):
        await nc.publish(subjects.CALL_PREPARE, prepare.model_dump_json().encode())


def create_app(settings: GatewaySettings) -> FastAPI:
    """Build the gateway app; NATS is connected in the lifespan."""
    checker = SignatureChecker(
        settings.twilio_auth_token.get_secret_value(), settings.public_base_url, settings.stream_base_url
    )
    gateway_id = settings.instance_id or f"gateway-{uuid.uuid4().hex[:8]}"

    async def answer_ready(msg: Msg) -> None:
        """Another gateway, draining, asks whether one is ready to take its calls: yes, unless this
        one drains too."""
        if not msg.reply or getattr(app.state, "draining", True):
            return
        with contextlib.suppress(nats.errors.Error):
            await msg.respond(GatewayReady(gateway_id=gateway_id).model_dump_json().encode())

    def move_url(call_id: str, move_id: str) -> str:
        """A fresh signed stream URL that only the move ``move_id`` of ``call_id`` opens."""
        return settings.stream_url(checker.stream_path(call_id, int(time.time()), move_id))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nc = await bus.connect(settings.nats_servers(), name=gateway_id, **settings.nats_credentials())
        line = TwilioLine(settings)
        try:
            js = nc.jetstream()
            await bus.ensure_stream(js, replicas=settings.jetstream_replicas)
            calls = CallBook(await bus.ensure_calls_bucket(js, replicas=settings.jetstream_replicas))
            app.state.nc, app.state.js, app.state.calls = nc, js, calls
            app.state.ctx = StreamContext(nc, js, calls, line, settings, gateway_id, move_url=move_url)
            app.state.streams, app.state.draining = {}, False
            await nc.subscribe(subjects.GATEWAYS_READY, cb=answer_ready)
            log.info("media-gateway %s ready; Twilio webhook %s/twilio-voice", gateway_id, settings.public_base_url)
            yield
        finally:
            await line.close()
            if (ctx := getattr(app.state, "ctx", None)) is not None and ctx.bus is not None:
                await ctx.bus.flush()
            await bus.close(nc)

    app = FastAPI(title="Dialtone media-gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(m.RequestMetrics)

    async def _signed_form(request: Request, endpoint: str) -> dict[str, str] | Response:
        """The webhook's fields if the body is sane and the signature good, else the refusal."""
        try:
            params = await read_form(request, settings.max_webhook_bytes, settings.webhook_read_timeout_s)
        except BodyRejected as exc:
            m.WEBHOOKS.labels(endpoint, exc.reason).inc()
            log.warning("%s webhook refused before parsing (%s): %s", endpoint, exc.reason, exc.detail)
            return PlainTextResponse(exc.detail, status_code=exc.status, headers={"Connection": "close"})
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if not all(_TWILIO_PARAM.fullmatch(k) for k in params):
            m.WEBHOOKS.labels(endpoint, "bad_request").inc()
            return PlainTextResponse("unexpected form parameters", status_code=400)
        if not checker.webhook(path, params, request.headers.get("x-twilio-signature")):
            m.WEBHOOKS.labels(endpoint, "forbidden").inc()
            log.warning("%s webhook with a bad signature refused (call %r)", endpoint, params.get("CallSid", "?")[:64])
            return PlainTextResponse("invalid Twilio signature", status_code=403)
        return params

    @app.post("/twilio-voice")
    async def twilio_voice(request: Request) -> Response:
        params = await _signed_form(request, "voice")
        if isinstance(params, Response):
            return params
        query = request.query_params
        variables = {k[2:]: v for k, v in query.items() if k.startswith("v_")}
        if params.get("AnsweredBy"):
            variables["answered_by"] = params["AnsweredBy"]
        try:
            call_id = subjects.check_call_id(params.get("CallSid", ""))
            record = new_record(
                call_id,
                account_sid=params.get("AccountSid"),
                from_number=params.get("From"),
                to_number=params.get("To"),
                direction="outbound" if params.get("Direction", "").startswith("outbound") else "inbound",
                agent=query.get("agent") or settings.default_agent,
                variables=variables,
            )
        except (subjects.InvalidCallId, ValidationError) as exc:
            m.WEBHOOKS.labels("voice", "bad_request").inc()
            return PlainTextResponse(f"invalid call: {str(exc)[:200]}", status_code=400)
        try:
            await request.app.state.calls.register(record)
        except CallBookUnavailable as exc:
            # Twilio then goes to the number's fallback URL, if it has one, or plays its error message.
            log.error("could not keep the record of call %s: %s", call_id, exc)
            return PlainTextResponse("call store unavailable", status_code=503)
        m.WEBHOOKS.labels("voice", "ok").inc()
        if settings.prepare_sessions:
            await _prepare(request.app.state.nc, record)
        twiml = connect_stream(settings.stream_url(checker.stream_path(call_id, int(time.time()))))
        return Response(twiml, media_type="application/xml")

    @app.post("/twilio-status")
    async def twilio_status(request: Request) -> Response:
        params = await _signed_form(request, "status")
        if isinstance(params, Response):
            return params
        try:
            call_id = subjects.check_call_id(params.get("CallSid", ""))
            status = params["CallStatus"]
        except (subjects.InvalidCallId, KeyError):
            m.WEBHOOKS.labels("status", "bad_request").inc()
            return PlainTextResponse("CallSid and CallStatus are required", status_code=400)
        seq = params.get("SequenceNumber")
        try:
            event = CallStatus(
                id=f"{call_id}-status-{seq if seq is not None else 'x'}-{status}-{params.get('AnsweredBy', '')}"[:200],
                call_id=call_id,
                at=datetime.now(UTC),
                status=status[:64],
                source="twilio",
                answered_by=params.get("AnsweredBy"),
                sequence=int(seq) if seq and seq.isdigit() and len(seq) < 10 else None,
                duration_s=int(d) if (d := params.get("CallDuration")) and d.isdigit() and len(d) < 10 else None,
                direction="outbound" if params.get("Direction", "").startswith("outbound") else "inbound",
            )
        except ValidationError as exc:
            m.WEBHOOKS.labels("status", "bad_request").inc()
            return PlainTextResponse(f"invalid status callback: {str(exc)[:200]}", status_code=400)
        try:
            await request.app.state.js.publish(
                event.subject, encode_event(event), headers={"Nats-Msg-Id": event.id}, timeout=5
            )
        except (NoStreamResponseError, TimeoutError, nats.errors.Error) as exc:
            # Twilio may not retry a failed status callback; a call whose end is never recorded is
            # closed by the sweeper.
            log.error("could not record status %s of %s: %s", status, call_id, exc)
            return PlainTextResponse("event bus unavailable", status_code=503)
        m.WEBHOOKS.labels("status", "ok").inc()
        return Response(status_code=204)

    async def _refuse(ws: WebSocket, reason: str, call_id: str) -> None:
        m.SOCKETS_REFUSED.labels(reason).inc()
        log.warning("media socket refused (%s) for call %r", reason, call_id[:64])
        await ws.close(code=1008)  # before accept: the client sees HTTP 403

    @app.websocket("/media/{call_id}/{issued}/{token}")
    async def media(ws: WebSocket, call_id: str, issued: str, token: str) -> None:
        try:
            subjects.check_call_id(call_id)
        except subjects.InvalidCallId:
            return await _refuse(ws, "bad_call_id", call_id)
        if not checker.media_socket(f"{call_id}/{issued}/{token}", ws.headers.get("x-twilio-signature")):
            return await _refuse(ws, "signature", call_id)
        if not checker.token_matches(call_id, issued, token, now=time.time(), ttl_s=settings.stream_url_ttl_s):
            return await _refuse(ws, "token", call_id)
        calls: CallBook = ws.app.state.calls
        stream_key = secrets.token_urlsafe(16)
        try:
            record = await calls.claim(call_id, stream_key, gateway_id)
            if record is None:
                known = await calls.get(call_id)
                return await _refuse(ws, "unknown_call" if known is None else f"already_{known.state}", call_id)
        except CallBookUnavailable:
            return await _refuse(ws, "store_unavailable", call_id)
        await _serve(ws, record)

    @app.websocket("/media/{call_id}/{issued}/{move_id}/{token}")
    async def moved_media(ws: WebSocket, call_id: str, issued: str, move_id: str, token: str) -> None:
        """The stream Twilio opens for a call another gateway moves: only the URL issued for that
        move (its id in the record, ``moving``) takes the call, and only once the old stream stopped."""
        try:
            subjects.check_call_id(call_id)
        except subjects.InvalidCallId:
            return await _refuse(ws, "bad_call_id", call_id)
        if not checker.media_socket(f"{call_id}/{issued}/{move_id}/{token}", ws.headers.get("x-twilio-signature")):
            return await _refuse(ws, "signature", call_id)
        if not checker.token_matches(call_id, issued, token, now=time.time(), ttl_s=settings.stream_url_ttl_s,
                                     move_id=move_id):
            return await _refuse(ws, "token", call_id)
        calls: CallBook = ws.app.state.calls
        deadline = time.monotonic() + settings.move_wait_s
        try:
            while (record := await calls.claim_move(call_id, move_id, gateway_id)) is None:
                known = await calls.get(call_id)
                if known is None or (known.state, known.move_id) != ("moving", move_id):
                    return await _refuse(ws, "unknown_call" if known is None else f"move_{known.state}", call_id)
                if time.monotonic() > deadline:  # the old stream never said where it stopped
                    return await _refuse(ws, "move_not_stopped", call_id)
                await asyncio.sleep(0.02)
        except CallBookUnavailable:
            return await _refuse(ws, "store_unavailable", call_id)
        await _serve(ws, record, moved=True)

    async def _serve(ws: WebSocket, record: CallRecord, *, moved: bool = False) -> None:
        await ws.accept()
        stream = MediaStream(ws, ws.app.state.ctx, record, moved=moved)
        streams: dict[MediaStream, asyncio.Future] = ws.app.state.streams
        if ws.app.state.draining:  # the balancer had not yet seen our 503: serve it, never drop it
            stream.log.info("stream opened while draining")
        streams[stream] = done = asyncio.get_running_loop().create_future()
        try:
            await stream.run()
        finally:
            del streams[stream]
            done.set_result(None)

    @app.websocket("/media")
    async def media_without_token(ws: WebSocket) -> None:
        await _refuse(ws, "no_token", "-")

    @app.get("/healthz")
    async def healthz(request: Request) -> Response:
        state = request.app.state
        if getattr(state, "draining", False):
            return PlainTextResponse(f"draining: {len(state.streams)} calls left", status_code=503)
        nc = getattr(state, "nc", None)
        if nc is None or not nc.is_connected:
            return PlainTextResponse("nats disconnected", status_code=503)
        return PlainTextResponse("ok")

    @app.get("/livez")
    async def livez() -> Response:
        """Liveness: the process answers. Readiness (NATS, draining) is /healthz."""
        return PlainTextResponse("alive")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(m.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app


async def _ready_gateway(nc: Client) -> str | None:
    """The id of another gateway that takes new streams (the first to answer), or None."""
    try:
        reply = await nc.request(subjects.GATEWAYS_READY, b"", timeout=0.5)
        return GatewayReady.model_validate_json(reply.data).gateway_id
    except (nats.errors.Error, TimeoutError, ValidationError):
        return None


async def drain(app: FastAPI, grace: float) -> None:
    """SIGTERM: report not-ready at once (``/healthz`` 503, so balancers send new calls elsewhere),
    let the calls on this gateway's sockets finish for up to ``grace`` seconds, then have Twilio
    apologise and hang up on whatever is left, rather than cut callers off in silence. Webhooks and
    status callbacks are still answered meanwhile: they hold no state here.

    ``MOVE_BEFORE_S`` before the grace ends, every call still here is moved to another gateway
    (``MediaStream.move``); a call whose move fails stays, and is apologised to at the end."""
    state = app.state
    if not hasattr(state, "streams"):
        return  # never started
    state.draining = True
    streams: dict[MediaStream, asyncio.Future] = state.streams
    log.info("draining: no new calls; waiting up to %.0f s for %d calls", grace, len(streams))
    deadline = time.monotonic() + grace
    before = state.ctx.settings.move_before_s
    move_at = deadline - before if before > 0 else None
    moving: set[asyncio.Task] = set()
    asked: set[MediaStream] = set()
    told: set[MediaStream] = set()
    while streams and (left := deadline - time.monotonic()) > 0:  # streams opened meanwhile count too
        if move_at is not None and time.monotonic() >= move_at:
            if (fresh := [s for s in streams if s not in asked]) and (ready := await _ready_gateway(state.nc)):
                log.info("moving %d calls to other gateways (%s is ready)", len(fresh), ready)
                for stream in fresh:
                    asked.add(stream)
                    moving.add(asyncio.create_task(stream.move(), name=f"move-{stream.call_id}"))
            elif untold := [s for s in fresh if s not in told]:  # asked again in half a second
                log.warning("no other gateway is ready: %d calls stay here for now", len(untold))
                told.update(untold)
                for stream in untold:
                    await stream.cannot_move("no other gateway is ready")
            left = min(left, 0.5)  # look again for streams opened meanwhile
        elif move_at is not None:
            left = min(left, move_at - time.monotonic())
        await asyncio.wait(list(streams.values()), timeout=max(left, 0.01))
    if moving:  # moves under way end first: a call Twilio is leaving this gateway for must not hear goodbye
        await asyncio.wait(moving, timeout=2 * state.ctx.settings.move_wait_s + 5)
        for task in moving:
            task.cancel()
        await asyncio.gather(*moving, return_exceptions=True)
    if streams:
        if staying := [s for s in streams if not s.handing_over]:
            log.warning("drain grace over: %d calls are still on, Twilio says goodbye to them", len(staying))
            await asyncio.gather(*(stream.leave("gateway_shutdown") for stream in staying), return_exceptions=True)
        await asyncio.wait(list(streams.values()), timeout=max(10.0, state.ctx.settings.move_wait_s + 5))
    log.info("drained")
