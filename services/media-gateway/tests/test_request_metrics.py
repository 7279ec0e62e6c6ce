"""The gateway's HTTP and WebSocket metrics, as an operator reads them on ``/metrics``: requests
and refused upgrades by route template and status code, never by a call's own URL."""

from __future__ import annotations

import pytest
from dialtone_gateway import metrics
from dialtone_gateway.app import create_app
from dialtone_gateway.settings import GatewaySettings
from fastapi import FastAPI, WebSocket
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

pytestmark = pytest.mark.unit

CALL = "CA" + "1" * 32
MEDIA_ROUTE = "/media/{call_id}/{issued}/{token}"


def count(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def client() -> TestClient:
    # No lifespan: no NATS, which the requests below never reach.
    return TestClient(create_app(GatewaySettings(twilio_auth_token="t", public_base_url="https://gw.example")))


def test_requests_are_counted_by_route_template_and_status(client: TestClient) -> None:
    requests = "dialtone_gateway_http_requests_total"
    forbidden = count(requests, route="/twilio-voice", method="POST", code="403")
    unhealthy = count(requests, route="/healthz", method="GET", code="503")
    unmatched = count(requests, route="unmatched", method="GET", code="404")

    assert client.post("/twilio-voice", data={"CallSid": CALL}).status_code == 403  # unsigned
    assert client.get("/healthz").status_code == 503  # NATS not connected
    assert client.get(f"/calls/{CALL}").status_code == 404

    assert count(requests, route="/twilio-voice", method="POST", code="403") == forbidden + 1
    assert count(requests, route="/healthz", method="GET", code="503") == unhealthy + 1
    assert count(requests, route="unmatched", method="GET", code="404") == unmatched + 1
    body = client.get("/metrics").text
    assert CALL not in body  # a call id never becomes a label
    assert "process_open_fds" in body and "dialtone_gateway_http_requests_total" in body


def test_refused_websocket_upgrades_are_counted_by_route_template(client: TestClient) -> None:
    handshakes = "dialtone_gateway_websocket_handshakes_total"
    refused = count(handshakes, route=MEDIA_ROUTE, code="403")
    accepted = count(handshakes, route=MEDIA_ROUTE, code="101")

    for token in ("a" * 22, "b" * 22):  # two calls' URLs, one route
        with pytest.raises(WebSocketDisconnect), client.websocket_connect(f"/media/{CALL}/1700000000/{token}"):
            pass

    assert count(handshakes, route=MEDIA_ROUTE, code="403") == refused + 2
    assert count(handshakes, route=MEDIA_ROUTE, code="101") == accepted
    assert count("dialtone_gateway_sockets_refused_total", reason="signature") >= 2


def test_an_accepted_upgrade_is_counted_when_accepted_not_when_the_call_ends() -> None:
    app = FastAPI()
    app.add_middleware(metrics.RequestMetrics)

    @app.websocket("/echo/{name}")
    async def echo(ws: WebSocket, name: str) -> None:
        await ws.accept()
        await ws.send_text(await ws.receive_text())

    handshakes = "dialtone_gateway_websocket_handshakes_total"
    before = count(handshakes, route="/echo/{name}", code="101")
    with TestClient(app).websocket_connect("/echo/CA1") as ws:
        assert count(handshakes, route="/echo/{name}", code="101") == before + 1  # the socket is still open
        ws.send_text("hi")
        assert ws.receive_text() == "hi"
    assert count(handshakes, route="/echo/{name}", code="101") == before + 1
