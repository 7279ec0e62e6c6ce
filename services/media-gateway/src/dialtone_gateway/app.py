"""The media-gateway's HTTP and WebSocket surface: Twilio's only contact."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from dialtone_common import bus
from dialtone_proto import subjects
from dialtone_proto.events import CallStatus, encode_event
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import PlainTextResponse, Response
from nats.js.errors import NoStreamResponseError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dialtone_gateway import metrics as m
from dialtone_gateway.settings import GatewaySettings
from dialtone_gateway.signatures import SignatureChecker
from dialtone_gateway.streams import MediaStream
from dialtone_gateway.twiml import connect_stream

log = logging.getLogger("dialtone.gateway")


def create_app(settings: GatewaySettings) -> FastAPI:
    """Build the gateway app; NATS is connected in the lifespan."""
    checker = SignatureChecker(
        settings.twilio_auth_token.get_secret_value(), settings.public_base_url, settings.stream_url
    )
    gateway_id = settings.instance_id or f"gateway-{uuid.uuid4().hex[:8]}"

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nc = await bus.connect(settings.nats_servers(), name=gateway_id)
        js = nc.jetstream()
        await bus.ensure_stream(js)
        app.state.nc, app.state.js = nc, js
        log.info("media-gateway %s ready; Twilio webhook %s/twilio-voice", gateway_id, settings.public_base_url)
        try:
            yield
        finally:
            await bus.close(nc)

    app = FastAPI(title="Dialtone media-gateway", lifespan=lifespan, docs_url=None, redoc_url=None)

    async def _form(request: Request) -> dict[str, str]:
        form = await request.form()
        return {k: str(v) for k, v in form.items()}

    def _path(request: Request) -> str:
        return request.url.path + (f"?{request.url.query}" if request.url.query else "")

    @app.post("/twilio-voice")
    async def twilio_voice(request: Request) -> Response:
        params = await _form(request)
        if not checker.webhook(_path(request), params, request.headers.get("x-twilio-signature")):
            m.WEBHOOKS.labels("voice", "forbidden").inc()
            log.warning("voice webhook with a bad signature refused (call %s)", params.get("CallSid", "?")[:64])
            return PlainTextResponse("invalid Twilio signature", status_code=403)
        m.WEBHOOKS.labels("voice", "ok").inc()
        query = request.query_params
        stream_params = {
            "from": params.get("From"),
            "to": params.get("To"),
            "direction": params.get("Direction", "inbound"),
            "agent": query.get("agent"),
            "answered_by": params.get("AnsweredBy"),
        }
        stream_params |= {k: v for k, v in query.items() if k.startswith("v_")}
        return Response(connect_stream(settings.stream_url, stream_params), media_type="application/xml")

    @app.post("/twilio-status")
    async def twilio_status(request: Request) -> Response:
        params = await _form(request)
        if not checker.webhook(_path(request), params, request.headers.get("x-twilio-signature")):
            m.WEBHOOKS.labels("status", "forbidden").inc()
            return PlainTextResponse("invalid Twilio signature", status_code=403)
        try:
            call_id = subjects.check_call_id(params.get("CallSid", ""))
            status = params["CallStatus"]
        except (subjects.InvalidCallId, KeyError):
            m.WEBHOOKS.labels("status", "bad_request").inc()
            return PlainTextResponse("CallSid and CallStatus are required", status_code=400)
        seq = params.get("SequenceNumber")
        event = CallStatus(
            id=f"{call_id}-status-{seq if seq is not None else 'x'}-{status}-{params.get('AnsweredBy', '')}",
            call_id=call_id,
            at=datetime.now(UTC),
            status=status,
            source="twilio",
            answered_by=params.get("AnsweredBy"),
            sequence=int(seq) if seq and seq.isdigit() else None,
            duration_s=int(d) if (d := params.get("CallDuration")) and d.isdigit() else None,
            direction="outbound" if params.get("Direction", "").startswith("outbound") else "inbound",
        )
        try:
            await request.app.state.js.publish(
                event.subject, encode_event(event), headers={"Nats-Msg-Id": event.id}, timeout=5
            )
        except (NoStreamResponseError, TimeoutError) as exc:
            # Twilio retries a callback that fails, so a 503 here loses nothing.
            log.error("could not record status %s of %s: %s", status, call_id, exc)
            return PlainTextResponse("event bus unavailable", status_code=503)
        m.WEBHOOKS.labels("status", "ok").inc()
        return Response(status_code=204)

    @app.websocket("/media")
    async def media(ws: WebSocket) -> None:
        if not checker.media_socket(ws.headers.get("x-twilio-signature")):
            m.SOCKETS_REFUSED.labels("signature").inc()
            log.warning("media socket with a bad signature refused")
            await ws.close(code=1008)  # before accept: the client sees HTTP 403
            return
        await ws.accept()
        await MediaStream(ws, ws.app.state.nc, settings, gateway_id).run()

    @app.get("/healthz")
    async def healthz(request: Request) -> Response:
        nc = getattr(request.app.state, "nc", None)
        if nc is None or not nc.is_connected:
            return PlainTextResponse("nats disconnected", status_code=503)
        return PlainTextResponse("ok")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
