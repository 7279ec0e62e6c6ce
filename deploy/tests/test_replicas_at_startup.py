"""JETSTREAM_REPLICAS reaches the stream and the calls bucket from every service that creates them:
each service starts against a real NATS (and PostgreSQL for the writer) with the setting at 3, and
its start-up is stopped at the moment it asks JetStream for them."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest
from dialtone_bridge.main import serve as serve_bridge
from dialtone_bridge.settings import BridgeSettings
from dialtone_common import bus
from dialtone_gateway.app import create_app
from dialtone_gateway.settings import GatewaySettings
from dialtone_writer import main as writer_main
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from .conftest import ROOT

pytestmark = pytest.mark.integration


class Asked(Exception):
    """Start-up stopped where it asked for the calls bucket (or the writer, for the stream)."""


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch, nats_url: str) -> dict[str, int]:
    """The replica counts a start-up asks for; the single test server gets one copy."""
    seen: dict[str, int] = {}
    real_stream = bus.ensure_stream

    async def ensure_stream(js: JetStreamContext, replicas: int = 1) -> None:
        seen["stream"] = replicas
        await real_stream(js, replicas=1)

    async def ensure_calls_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
        seen["calls bucket"] = replicas
        raise Asked

    monkeypatch.setattr(bus, "ensure_stream", ensure_stream)
    monkeypatch.setattr(bus, "ensure_calls_bucket", ensure_calls_bucket)
    monkeypatch.setenv("JETSTREAM_REPLICAS", "3")
    monkeypatch.setenv("NATS_URL", nats_url)
    return seen


async def test_the_gateway_asks_for_the_configured_replicas(asked: dict[str, int]) -> None:
    app = create_app(GatewaySettings(twilio_auth_token="test-token"))
    with pytest.raises(Asked):
        async with app.router.lifespan_context(app):
            pass
    assert asked == {"stream": 3, "calls bucket": 3}


async def test_the_bridge_asks_for_the_configured_replicas(asked: dict[str, int]) -> None:
    settings = BridgeSettings(agents_dir=ROOT / "agents", metrics_port=0)
    with pytest.raises(Asked):
        async with AsyncExitStack() as stack:
            await serve_bridge(stack, asyncio.Event(), settings)
    assert asked == {"stream": 3, "calls bucket": 3}


async def test_the_writer_asks_for_the_configured_replicas(
    asked: dict[str, int], monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("METRICS_PORT", "0")

    async def stream_then_stop(js: JetStreamContext, replicas: int = 1) -> None:
        asked["stream"] = replicas
        raise Asked

    monkeypatch.setattr(bus, "ensure_stream", stream_then_stop)
    with pytest.raises(Asked):
        async with AsyncExitStack() as stack:
            await writer_main._serve(stack, asyncio.Event())
    assert asked == {"stream": 3}
