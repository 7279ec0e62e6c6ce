"""Prometheus metrics of the media-gateway, in its own registry (served on ``/metrics``).

The audio path uses children bound here once (``MEDIA_IN``, ``FRAMES_TO_BRIDGE``, ...), so a frame
costs no label lookup.
"""

from __future__ import annotations

from dialtone_common.metrics import TRANSIT_BUCKETS, service_registry
from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REGISTRY = service_registry()

STREAMS_ACTIVE = Gauge("dialtone_gateway_streams_active", "Media Streams sockets open now", registry=REGISTRY)
STREAMS_TOTAL = Counter("dialtone_gateway_streams_total", "Media Streams sockets accepted", registry=REGISTRY)
SOCKETS_REFUSED = Counter(
    "dialtone_gateway_sockets_refused_total", "Upgrades refused", ["reason"], registry=REGISTRY
)
WEBHOOKS = Counter("dialtone_gateway_webhooks_total", "Twilio webhooks", ["endpoint", "result"], registry=REGISTRY)
HTTP_REQUESTS = Counter(
    "dialtone_gateway_http_requests_total", "HTTP requests answered, by route template, method and status code",
    ["route", "method", "code"], registry=REGISTRY,
)
WS_HANDSHAKES = Counter(
    "dialtone_gateway_websocket_handshakes_total",
    "WebSocket upgrades by route template and answer (101 accepted, 403 refused)",
    ["route", "code"], registry=REGISTRY,
)
MESSAGES_IN = Counter(
    "dialtone_gateway_messages_in_total", "Twilio messages received", ["event"], registry=REGISTRY
)
BAD_MESSAGES = Counter(
    "dialtone_gateway_bad_messages_total", "Malformed or unexpected Twilio messages", ["reason"], registry=REGISTRY
)
MESSAGES_OUT = Counter("dialtone_gateway_messages_out_total", "Messages sent to Twilio", ["event"], registry=REGISTRY)
AUDIO_OUT_BYTES = Counter(
    "dialtone_gateway_audio_out_bytes_total", "Agent audio bytes sent to Twilio", registry=REGISTRY
)
AUDIO_FRAMES = Counter(
    "dialtone_gateway_audio_frames_total",
    "Audio frames forwarded: to_bridge (caller audio published on the bus), from_bridge (agent audio received)",
    ["direction"], registry=REGISTRY,
)
BUS_TRANSIT = Histogram(
    "dialtone_gateway_bus_transit_seconds",
    "Bridge to gateway: a frame's sent time in its header (the bridge's wall clock) to its arrival here",
    buckets=TRANSIT_BUCKETS, registry=REGISTRY,
)
BAD_FRAMES = Counter("dialtone_gateway_bad_frames_total", "Malformed frames from the bus", registry=REGISTRY)
CLAIMS = Counter("dialtone_gateway_claims_total", "Call offers to the bridges", ["result"], registry=REGISTRY)
CLAIM_SECONDS = Histogram(
    "dialtone_gateway_claim_seconds", "Time for a bridge to claim a call",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=REGISTRY,
)
BRIDGE_LOST = Counter(
    "dialtone_gateway_bridge_lost_total", "Calls whose bridge fell silent and were re-offered", registry=REGISTRY
)
HANDOFFS = Counter(
    "dialtone_gateway_handoffs_total", "Calls a draining bridge handed over, re-offered to the others", registry=REGISTRY
)
MOVES = Counter(
    "dialtone_gateway_moves_total",
    "Calls a draining gateway moved to another gateway, by result (moved, rest_failed, not_stopped, "
    "no_new_stream, came_back, record, no_gateway)",
    ["result"], registry=REGISTRY,
)
for _result in ("moved", "rest_failed", "not_stopped", "no_new_stream", "came_back", "record", "no_gateway"):
    MOVES.labels(_result)
MOVE_SECONDS = Histogram(
    "dialtone_gateway_move_gap_seconds",
    "A moved call's old stream's stop to its new stream's start (the caller's gap), seen by the new gateway",
    buckets=(0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5), registry=REGISTRY,
)
RESCUES = Counter(
    "dialtone_gateway_rescues_total", "Calls no bridge would take: Twilio apologised and hung up", registry=REGISTRY
)
FRAMES_DROPPED = Counter(
    "dialtone_gateway_frames_dropped_total", "Caller frames that could not be sent to the bus", ["reason"],
    registry=REGISTRY,
)

# Bound once: the audio path increments these without a label lookup.
MEDIA_IN = MESSAGES_IN.labels("media")
SENT = {event: MESSAGES_OUT.labels(event) for event in ("media", "mark", "clear")}
FRAMES_TO_BRIDGE = AUDIO_FRAMES.labels("to_bridge")
FRAMES_FROM_BRIDGE = AUDIO_FRAMES.labels("from_bridge")
DROPPED_NATS_DOWN = FRAMES_DROPPED.labels("nats_disconnected")
DROPPED_NATS_ERROR = FRAMES_DROPPED.labels("nats_error")

# A labelled series exists only from its first increment, and rate() or increase() cannot see that
# first one: the first refused handshake or failed claim would never show on a graph or in an
# alert. The outcomes known in advance start at zero.
for _route in ("/media/{call_id}/{issued}/{token}", "/media"):
    for _code in ("101", "403"):
        WS_HANDSHAKES.labels(_route, _code)
for _endpoint in ("voice", "status"):
    for _result in ("ok", "forbidden", "bad_request"):
        WEBHOOKS.labels(_endpoint, _result)
for _result in ("claimed", "reclaimed", "retry", "failed"):
    CLAIMS.labels(_result)


class RequestMetrics:
    """ASGI middleware: counts every HTTP request by route template and status, and every WebSocket
    upgrade by route template and answer. The route template, never the raw path: a stream URL
    carries a call id and a token."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        code: int | None = None
        websocket = scope["type"] == "websocket"

        def route() -> str:
            return getattr(scope.get("route"), "path", None) or "unmatched"

        async def send_and_note(message: Message) -> None:
            nonlocal code
            kind = message["type"]
            if code is None:
                if kind in ("http.response.start", "websocket.http.response.start"):
                    code = message["status"]
                elif kind == "websocket.accept":
                    code = 101
                elif kind == "websocket.close":
                    code = 403  # closed before accept: the server answers the upgrade with 403
                if code is not None and websocket:  # counted at the answer, not when the socket ends
                    WS_HANDSHAKES.labels(route(), str(code)).inc()
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            if not websocket:
                HTTP_REQUESTS.labels(route(), scope["method"], str(code or 500)).inc()
            elif code is None:  # the app failed before answering the upgrade
                WS_HANDSHAKES.labels(route(), "500").inc()
