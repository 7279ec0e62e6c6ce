"""``JETSTREAM_REPLICAS``: the copies NATS keeps of the event stream and the calls bucket, so a
3-node cluster keeps call events and call records through the loss of a node."""

from __future__ import annotations

from typing import cast

import pytest
from dialtone_common import bus
from dialtone_common.settings import ServiceSettings
from dialtone_proto import STREAM_NAME
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StreamConfig
from nats.js.errors import BadRequestError

pytestmark = pytest.mark.unit


class RecordingJetStream:
    """The part of ``JetStreamContext`` that ``ensure_stream``/``ensure_calls_bucket`` use; it keeps
    the configurations sent, as the server would receive them. ``existing`` streams answer ``add``
    with the server's "already exists with other settings" error, as a real server does."""

    def __init__(self, existing: tuple[str, ...] = ()) -> None:
        self.existing = set(existing)
        self.added: list[StreamConfig] = []
        self.updated: list[StreamConfig] = []
        self.buckets: list[KeyValueConfig] = []

    async def add_stream(self, config: StreamConfig) -> None:
        if config.name in self.existing:
            raise BadRequestError(description="stream name already in use with a different configuration")
        self.added.append(config)

    async def update_stream(self, config: StreamConfig) -> None:
        self.updated.append(config)

    async def create_key_value(self, config: KeyValueConfig) -> object:
        self.buckets.append(config)
        return object()


def _settings(monkeypatch: pytest.MonkeyPatch, value: str | None) -> ServiceSettings:
    if value is None:
        monkeypatch.delenv("JETSTREAM_REPLICAS", raising=False)
    else:
        monkeypatch.setenv("JETSTREAM_REPLICAS", value)
    return ServiceSettings()


async def test_the_replica_setting_reaches_the_stream_and_the_calls_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    replicas = _settings(monkeypatch, "3").jetstream_replicas
    js = RecordingJetStream()
    await bus.ensure_stream(cast(JetStreamContext, js), replicas=replicas)
    await bus.ensure_calls_bucket(cast(JetStreamContext, js), replicas=replicas)
    assert [c.num_replicas for c in js.added] == [3]
    assert [c.replicas for c in js.buckets] == [3]


async def test_an_existing_stream_is_updated_to_the_configured_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    """Raising JETSTREAM_REPLICAS on an installation that already has the stream takes effect."""
    js = RecordingJetStream(existing=(STREAM_NAME,))
    await bus.ensure_stream(cast(JetStreamContext, js), replicas=_settings(monkeypatch, "3").jetstream_replicas)
    assert js.added == [] and [c.num_replicas for c in js.updated] == [3]


async def test_one_replica_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    """A single NATS server (``make run``, compose) cannot hold more than one copy."""
    replicas = _settings(monkeypatch, None).jetstream_replicas
    js = RecordingJetStream()
    await bus.ensure_stream(cast(JetStreamContext, js), replicas=replicas)
    await bus.ensure_calls_bucket(cast(JetStreamContext, js), replicas=replicas)
    assert replicas == 1 and js.added[0].num_replicas == 1 and js.buckets[0].replicas == 1


@pytest.mark.parametrize("value", ["0", "6", "three"])
def test_an_impossible_replica_count_stops_the_service_at_start(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    with pytest.raises(ValueError, match="jetstream_replicas"):
        _settings(monkeypatch, value)
