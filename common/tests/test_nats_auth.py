"""The bus asks who you are: every service's NATS user may do what its code does on the bus and
nothing else, checked against a real nats-server run with the configuration rendered from
``dialtone_common.nats_auth``; and the deployment's configuration is that rendering."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
import pytest_asyncio
from dialtone_common import bus
from dialtone_common.embedded import embedded_nats, nats_binary
from dialtone_common.nats_auth import DEPLOYED_USERS, HARNESS, SERVICE_USERS, RunCredentials, render_config
from dialtone_common.settings import ServiceSettings
from dialtone_proto import subjects
from dialtone_sim.polling import poll
from nats.aio.client import Client
from pydantic import ValidationError

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_CONF = ROOT / "deploy" / "nats" / "nats.conf"

AUDIO_IN = subjects.call_in("CA0123", "key1")
AUDIO_OUT = subjects.call_out("CA0123", "key1")
TAP = subjects.call_rec("CA0123", "key1")
EVENT = subjects.event("CA0123", "transcript.line")


# ---- the configuration -----------------------------------------------------------------------------
@pytest.mark.unit
def test_the_deployment_configuration_is_rendered_from_code() -> None:
    assert DEPLOY_CONF.read_text() == render_config(), (
        "deploy/nats/nats.conf differs from dialtone_common.nats_auth: "
        "python -m dialtone_common.nats_auth > deploy/nats/nats.conf")


@pytest.mark.unit
def test_the_deployment_configuration_holds_no_password_only_variables() -> None:
    text = DEPLOY_CONF.read_text()
    passwords = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.strip().startswith("password:")]
    assert sorted(passwords) == sorted(f"${u.password_env}" for u in DEPLOYED_USERS)
    assert "user: \"eval\"" in text  # the deployed test worker (dialtone eval-worker) connects as eval
    assert HARNESS.name not in text  # the harness exists in development and test runs only


@pytest.mark.unit
def test_nats_server_accepts_the_deployment_configuration_and_needs_every_password(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", "")} | {u.password_env: "x" * 48 for u in DEPLOYED_USERS}
    ok = subprocess.run([nats_binary(), "-c", str(DEPLOY_CONF), "-t"], env=env, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    env.pop("TOOLS_NATS_PASSWORD")
    missing = subprocess.run([nats_binary(), "-c", str(DEPLOY_CONF), "-t"], env=env, capture_output=True, text=True,
                             timeout=30)
    assert missing.returncode != 0 and "TOOLS_NATS_PASSWORD" in missing.stdout + missing.stderr


@pytest.mark.unit
def test_a_rendered_password_must_exist_and_be_long() -> None:
    with pytest.raises(ValueError, match="tools"):
        render_config([SERVICE_USERS["tool-runner"]], {"tools": "short"})
    with pytest.raises(ValueError, match="gateway"):
        render_config([SERVICE_USERS["media-gateway"]], {})


@pytest.mark.unit
def test_run_credentials_never_show_a_password() -> None:
    credentials = RunCredentials.generate()
    shown = repr(credentials) + str(credentials)
    assert not [p for p in credentials.passwords.values() if p in shown]
    assert credentials.env("tool-runner")["NATS_USER"] == "tools"
    with pytest.raises(ValueError, match="no NATS user for service"):
        credentials.env("nonsense")


@pytest.mark.unit
def test_settings_take_a_user_and_password_together_and_hide_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_USER", "tools")
    monkeypatch.setenv("NATS_PASSWORD", "s3cret-password-value")
    settings = ServiceSettings()
    assert settings.nats_credentials() == {"user": "tools", "password": "s3cret-password-value"}
    assert "s3cret-password-value" not in repr(settings) + str(settings.model_dump())
    monkeypatch.delenv("NATS_PASSWORD")
    with pytest.raises(ValidationError, match="NATS_USER and NATS_PASSWORD go together"):
        ServiceSettings()
    monkeypatch.delenv("NATS_USER")
    assert ServiceSettings().nats_credentials() == {"user": None, "password": None}


# ---- a real nats-server with the rendered configuration -------------------------------------------
@pytest.fixture(scope="module")
def credentials() -> RunCredentials:
    return RunCredentials.generate()


@pytest.fixture(scope="module")
def secured_nats(tmp_path_factory: pytest.TempPathFactory, credentials: RunCredentials) -> Iterator[str]:
    data = tmp_path_factory.mktemp("secured") / "nats"
    with embedded_nats(data, credentials=credentials) as url:
        conf = data / "nats.conf"
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600 and stat.S_IMODE(data.stat().st_mode) == 0o700
        yield url


class Client_:
    """A connection as one user, with the errors the server sent it asynchronously."""

    def __init__(self, nc: Client, errors: list[str]) -> None:
        self.nc, self.errors = nc, errors

    def violations(self) -> list[str]:
        """The server's "Permissions Violation" errors (nats-py reports them in lower case)."""
        return [e.lower() for e in self.errors if "permissions violation" in e.lower()]

    def refused(self, subject: str) -> bool:
        return any(f'"{subject.lower()}"' in v for v in self.violations())


@pytest_asyncio.fixture
async def connect(secured_nats: str, credentials: RunCredentials) -> AsyncIterator:
    opened: list[Client] = []

    async def as_user(user: str) -> Client_:
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        nc = await nats.connect(secured_nats, error_cb=on_error, allow_reconnect=False,
                                **credentials.connect_options(user))
        opened.append(nc)
        return Client_(nc, errors)

    yield as_user
    for nc in opened:
        await nc.close()


async def _heard(client: Client_, subject: str) -> list[bytes]:
    got: list[bytes] = []

    async def cb(msg) -> None:
        got.append(msg.data)

    await client.nc.subscribe(subject, cb=cb)
    await client.nc.flush()
    return got


async def _settle(*clients: Client_) -> None:
    """Every message published so far delivered, every refusal received: a flush of every client
    (the server has handled their publishes), then of every client again (a receiver's pong comes
    after the messages routed to it), then a moment for what would arrive against the rules."""
    for _ in range(2):
        for c in clients:
            await c.nc.flush()
    await asyncio.sleep(0.3)


async def _until_heard(sender: Client_, subject: str, heard: list[bytes], receiver: Client_) -> None:
    """The caller's frame published until the receiver's callback (a task of its own) has one: once
    a second, as a call sends frames, so one frame lost under a loaded machine's scheduling is not
    taken for a refusal. A receiver that never hears fails with what the server told it."""
    for _ in range(10):
        await sender.nc.publish(subject, b"caller")
        await _settle(sender, receiver)
        try:
            await poll(lambda: heard, 1, 0.02, "")
            return
        except AssertionError:
            continue
    raise AssertionError(f"{subject} never reached the receiver in 10 s: errors {receiver.errors}, "
                         f"stats {receiver.nc.stats}")


@pytest.mark.integration
async def test_a_client_without_credentials_or_with_a_wrong_password_is_refused(
    secured_nats: str, credentials: RunCredentials, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValueError, match="needs a password"):
        await bus.connect(secured_nats, "half", user="tools")
    # The tool-runner's real password given as the gateway's: refused, and never logged.
    stolen = credentials.passwords["tools"]
    with pytest.raises(PermissionError, match="'gateway'"):
        await bus.connect(secured_nats, "mixed-up", user="gateway", password=stolen)
    assert "'gateway'" in caplog.text and stolen not in caplog.text
    with pytest.raises(PermissionError, match="without credentials"):
        await bus.connect(secured_nats, "anonymous")
    plain = Client()  # nats-py itself, as any client would
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await plain.connect(secured_nats, allow_reconnect=False, max_reconnect_attempts=0)
    await plain.close()
    with pytest.raises(PermissionError, match="'tools'"):
        await bus.connect(secured_nats, "guess", user="tools", password="not-the-password-at-all")
    with pytest.raises(PermissionError, match="'dev-harness'"):
        await bus.connect(secured_nats, "guess", user="dev-harness", password="not-the-password-at-all")


@pytest.mark.integration
async def test_the_gateway_sets_up_jetstream_with_its_own_credentials_and_the_tool_runner_cannot(
    secured_nats: str, credentials: RunCredentials
) -> None:
    """What a gateway does at start-up (the event stream, the calls bucket, a call record) works
    as its user; the tool-runner's user may touch none of it."""
    gateway = await bus.connect(secured_nats, "gateway", **_creds(credentials, "media-gateway"))
    tools = await bus.connect(secured_nats, "tools", **_creds(credentials, "tool-runner"))
    try:
        js = gateway.jetstream(timeout=2)
        await bus.ensure_stream(js)
        calls = await bus.ensure_calls_bucket(js)
        await calls.put("CA0123", b"{}")
        assert (await calls.get("CA0123")).value == b"{}"
        with pytest.raises(nats.errors.TimeoutError):
            await tools.jetstream(timeout=1).key_value(subjects.CALLS_BUCKET)
    finally:
        await bus.close(gateway)
        await bus.close(tools)


def _creds(credentials: RunCredentials, service: str) -> dict[str, str]:
    env = credentials.env(service)
    return {"user": env["NATS_USER"], "password": env["NATS_PASSWORD"]}


@pytest.mark.integration
async def test_the_tool_runner_hears_no_audio_and_publishes_no_event(connect) -> None:
    harness, tools = await connect(HARNESS.name), await connect("tools")
    events = await _heard(harness, subjects.EVENTS_ALL)
    audio = await _heard(tools, AUDIO_IN)
    audio_out = await _heard(tools, AUDIO_OUT)
    inboxes = await _heard(tools, "_INBOX.>")
    await tools.nc.publish(EVENT, b'{"v": 1}')
    await tools.nc.publish(AUDIO_OUT, b"frame")
    await harness.nc.publish(AUDIO_IN, b"frame")
    await harness.nc.publish(AUDIO_OUT, b"frame")
    await harness.nc.publish("_INBOX.bridge.abc.def", b"a reply meant for a bridge")
    await _settle(harness, tools)
    assert events == [] and audio == [] and audio_out == [] and inboxes == []
    for subject in (AUDIO_IN, AUDIO_OUT, "_INBOX.>", EVENT):
        assert tools.refused(subject), subject


@pytest.mark.integration
async def test_the_admin_api_hears_calls_but_publishes_no_audio_offer_or_event(connect) -> None:
    harness, admin = await connect(HARNESS.name), await connect("admin")
    heard_events, heard_audio = await _heard(harness, subjects.EVENTS_ALL), await _heard(harness, AUDIO_OUT)
    listen = await _heard(admin, AUDIO_IN)  # the dashboard's listen-in
    await admin.nc.publish(EVENT, b'{"v": 1}')
    await admin.nc.publish(AUDIO_OUT, b"frame")
    await admin.nc.publish(subjects.CALL_OFFER, b"{}")
    await _until_heard(harness, AUDIO_IN, listen, admin)
    await _settle(harness, admin)
    assert heard_events == [] and heard_audio == []
    assert set(listen) == {b"caller"}
    for subject in (EVENT, AUDIO_OUT, subjects.CALL_OFFER):
        assert admin.refused(subject), subject


@pytest.mark.integration
async def test_only_the_gateway_speaks_for_the_caller_and_only_the_bridge_for_the_agent(connect) -> None:
    harness, gateway, bridge, writer = (await connect(HARNESS.name), await connect("gateway"),
                                        await connect("bridge"), await connect("writer"))
    heard_in, heard_out = await _heard(harness, AUDIO_IN), await _heard(harness, AUDIO_OUT)
    # The recorder's tap: the writer hears it, only the gateway may speak on it.
    tapped = await _heard(writer, TAP)
    await gateway.nc.publish(AUDIO_IN, b"caller")
    await bridge.nc.publish(AUDIO_OUT, b"agent")
    await gateway.nc.publish(TAP, b"tap")
    await gateway.nc.publish(AUDIO_OUT, b"forged agent")
    await bridge.nc.publish(AUDIO_IN, b"forged caller")
    await bridge.nc.publish(TAP, b"forged tap")
    await writer.nc.publish(AUDIO_IN, b"recorder forging")
    await _settle(harness, gateway, bridge, writer)
    # A message's callback runs in a task of its own, after the flush that delivered it.
    await poll(lambda: heard_in and heard_out and tapped, 10, 0.02, "the allowed frames to be heard")
    await _settle(harness, gateway, bridge, writer)
    assert heard_in == [b"caller"] and heard_out == [b"agent"] and tapped == [b"tap"]
    assert gateway.refused(AUDIO_OUT) and bridge.refused(AUDIO_IN) and writer.refused(AUDIO_IN)
    assert bridge.refused(TAP)


@pytest.mark.integration
async def test_the_writer_publishes_only_the_events_it_closes_calls_and_rates_recordings_with(connect) -> None:
    harness, writer = await connect(HARNESS.name), await connect("writer")
    heard = await _heard(harness, subjects.EVENTS_ALL)
    allowed = [subjects.event("CA0123", t) for t in ("call.status", "call.ended", "call.metric")]
    forged = [subjects.event("CA0123", t) for t in ("call.started", "transcript.line", "tool.called")]
    for subject in allowed + forged:
        await writer.nc.publish(subject, b"{}")
    await _settle(harness, writer)
    # A message's callback runs in a task of its own, after the flush that delivered it.
    await poll(lambda: len(heard) >= len(allowed), 10, 0.02, "the allowed events to be heard")
    await _settle(harness, writer)
    assert len(heard) == len(allowed)
    assert sorted(v.split('"')[1] for v in writer.violations()) == sorted(f.lower() for f in forged)


@pytest.mark.integration
async def test_the_bridge_answers_offers_and_the_tool_runner_tool_calls(connect) -> None:
    """allow_responses: a service may answer the requests it hears, and only through the reply."""
    gateway, bridge, tools = await connect("gateway"), await connect("bridge"), await connect("tools")

    async def answer(msg) -> None:
        await msg.respond(b"answered")

    await bridge.nc.subscribe(subjects.CALL_OFFER, queue=subjects.BRIDGE_QUEUE, cb=answer)
    await tools.nc.subscribe(subjects.TOOLS_CALL, cb=answer)
    await _settle(bridge, tools)
    assert (await gateway.nc.request(subjects.CALL_OFFER, b"{}", timeout=2)).data == b"answered"
    assert (await bridge.nc.request(subjects.TOOLS_CALL, b"{}", timeout=2)).data == b"answered"
    with pytest.raises(nats.errors.TimeoutError):  # the gateway may not call tools: its request is dropped
        await gateway.nc.request(subjects.TOOLS_CALL, b"{}", timeout=1)
    assert gateway.refused(subjects.TOOLS_CALL)


@pytest.mark.integration
async def test_the_admin_api_keeps_its_sign_ins_bucket_and_touches_no_call_record(
    secured_nats: str, credentials: RunCredentials
) -> None:
    from nats.js.api import KeyValueConfig

    admin = await bus.connect(secured_nats, "admin", **_creds(credentials, "admin-api"))
    try:
        js = admin.jetstream(timeout=2)
        signins = await js.create_key_value(KeyValueConfig(bucket=subjects.ADMIN_SIGNINS_BUCKET, history=1))
        await signins.put("session-1", b"{}")
        assert (await signins.get("session-1")).value == b"{}"
        await signins.delete("session-1")
        with pytest.raises(nats.errors.TimeoutError):
            await admin.jetstream(timeout=1).key_value(subjects.CALLS_BUCKET)
    finally:
        await bus.close(admin)
