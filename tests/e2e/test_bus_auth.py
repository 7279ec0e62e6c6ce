"""Acceptance: the bus asks who you are. The whole platform runs on an embedded NATS that asks every
client for credentials (each service has its own user, dialtone_common.nats_auth); a call works,
and nobody else can hear it or write into its transcript."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import nats
import pytest
from dialtone_common import bus
from dialtone_dev.platform import Platform
from dialtone_proto import CallStarted, TranscriptLine, encode_event, subjects
from dialtone_sim.polling import poll
from dialtone_sim.realtime import RealtimeSimulator
from nats.aio.client import Client

from .conftest import Admin
from .test_call import LINES, SCENARIO, converse

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

# Connections of this test whose refusals are on purpose; conftest ignores them when it checks that
# no service ever broke its permissions.
PROBE = "e2e-probe"


def _session_events(call_id: str, text: str) -> list:
    at = datetime.now(UTC)
    return [
        CallStarted(id=f"{call_id}-started", call_id=call_id, at=at, agent="support"),
        TranscriptLine(id=f"{call_id}-line", call_id=call_id, at=at, item_id="item-1", seq=0, role="caller",
                       text=text, agent="support"),
    ]


async def _publish(nc: Client, events: list) -> None:
    for event in events:
        await nc.publish(event.subject, encode_event(event), headers={"Nats-Msg-Id": event.id})
    await nc.flush()


async def test_without_credentials_nothing_reaches_the_bus(platform: Platform) -> None:
    """The simplest intruder: a client that gives no user, or a wrong password."""
    with pytest.raises(PermissionError):
        await bus.connect(platform.nats_url, PROBE)
    plain = Client()
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await plain.connect(platform.nats_url, name=PROBE, allow_reconnect=False, max_reconnect_attempts=0)
    await plain.close()
    with pytest.raises(PermissionError):
        await bus.connect(platform.nats_url, PROBE, user="gateway", password=secrets.token_urlsafe(24))


async def test_a_call_works_and_no_other_user_hears_it_or_writes_into_the_transcripts(
    platform: Platform, realtime: RealtimeSimulator, admin: Admin
) -> None:
    realtime.scenario = SCENARIO
    errors: dict[str, list[str]] = {"tools": [], "admin": []}

    def collect(user: str):
        async def on_error(exc: Exception) -> None:
            errors[user].append(str(exc).lower())
        return on_error

    # The harness (a test's own user, only the embedded server has it) hears the call as it goes;
    # the tool-runner's user tries to hear it too, and tries, like the admin API's user, to write
    # a session into the database.
    harness = await nats.connect(platform.nats_url, name="e2e-harness", **platform.nats_connect_options())
    tools = await nats.connect(platform.nats_url, name=PROBE, error_cb=collect("tools"),
                               **platform.nats_connect_options("tools"))
    admin_user = await nats.connect(platform.nats_url, name=PROBE, error_cb=collect("admin"),
                                    **platform.nats_connect_options("admin"))
    heard_by_harness: list[str] = []
    heard_by_tools: list[str] = []

    async def harness_cb(msg) -> None:
        heard_by_harness.append(msg.subject)

    async def tools_cb(msg) -> None:
        heard_by_tools.append(msg.subject)

    try:
        await harness.subscribe(f"{subjects.PREFIX}.call.>", cb=harness_cb)
        await tools.subscribe(f"{subjects.PREFIX}.call.>", cb=tools_cb)
        await tools.subscribe(subjects.CALL_IN_ALL, cb=tools_cb)
        await harness.flush()
        await tools.flush()

        call = await converse(platform, LINES)  # the services, each as its own user, carry the call
        session = await admin.session(call.call_sid)
        assert [line["text"] for line in session["transcript"] if line["role"] == "caller"] == LINES
        assert len(call.heard) > 8000 * 2  # the caller heard the agent

        # Forged sessions from the tool-runner's and the admin API's users, then a control session
        # from the harness's, which may publish events: once the control is written, anything
        # published before it that reached the event stream would have been written too.
        forged_tools, forged_admin, control = (f"CAforged{secrets.token_hex(8)}", f"CAforged{secrets.token_hex(8)}",
                                               f"CAcontrol{secrets.token_hex(8)}")
        await _publish(tools, _session_events(forged_tools, "forged by the tool-runner's user"))
        await _publish(admin_user, _session_events(forged_admin, "forged by the admin API's user"))
        await _publish(harness, _session_events(control, "the control line"))

        async def control_written() -> bool:
            status, _ = await admin.get(f"/sessions/{control}")
            return status == 200

        await poll(control_written, 20, what="the control session to be written")
        for forged in (forged_tools, forged_admin):
            status, _ = await admin.get(f"/sessions/{forged}")
            assert status == 404, f"a forged session {forged} reached the database"
    finally:
        for nc in (harness, tools, admin_user):
            await nc.close()

    # The call's audio went over the bus (the harness heard both sides), and the tool-runner's user
    # heard none of it: the server refused its subscriptions.
    assert any(s.endswith(".in") for s in heard_by_harness) and any(s.endswith(".out") for s in heard_by_harness)
    assert heard_by_tools == []
    assert any("permissions violation for subscription" in e for e in errors["tools"])
    for user in ("tools", "admin"):
        refused = [e for e in errors[user] if "permissions violation for publish" in e]
        assert any("call_started" in e for e in refused) and any("transcript_line" in e for e in refused), user


async def test_the_test_workers_user_takes_run_requests_and_publishes_progress_only(platform: Platform) -> None:
    """The dashboard's test runs: the admin API's user asks, the test worker's user (``eval``)
    answers and publishes progress, and may neither hear a call nor write an event."""
    from dialtone_proto.evals import EvalAccepted, EvalProgress, EvalStart

    refused: list[str] = []

    async def collect(e: Exception) -> None:
        refused.append(str(e))

    worker = await nats.connect(platform.nats_url, name=PROBE, error_cb=collect, **platform.nats_connect_options("eval"))
    admin_user = await nats.connect(platform.nats_url, name=PROBE, **platform.nats_connect_options("admin"))
    heard: list[str] = []
    try:
        async def answer(msg) -> None:
            await msg.respond(EvalAccepted(accepted=False, reason="probe").model_dump_json().encode())

        async def progress(msg) -> None:
            heard.append(msg.subject)

        await worker.subscribe(subjects.EVAL_START, queue=subjects.EVAL_QUEUE, cb=answer)
        await admin_user.subscribe(subjects.EVAL_PROGRESS_ALL, cb=progress)
        await worker.flush()
        await admin_user.flush()
        reply = await admin_user.request(subjects.EVAL_START, EvalStart(runs=1).model_dump_json().encode(), timeout=5)
        assert EvalAccepted.model_validate_json(reply.data).reason == "probe"
        run = f"probe-{secrets.token_hex(4)}"
        await worker.publish(subjects.eval_progress(run),
                             EvalProgress(run_id=run, status="running", total=1, done=0, passed=0).model_dump_json().encode())
        await poll(lambda: heard == [subjects.eval_progress(run)], 5, what="the progress at the admin API's user")
        # Nothing else: no event, no call audio.
        await _publish(worker, _session_events(f"CAforged{secrets.token_hex(8)}", "forged by the test worker's user"))
        await worker.subscribe(subjects.CALL_IN_ALL, cb=progress)
        await worker.flush()
        await poll(lambda: any("subscription" in e.lower() for e in refused) and
                   any("publish" in e.lower() for e in refused), 5, what="both kinds of refusal")  # fmt: skip
        assert any("permissions violation for publish" in e.lower() for e in refused), refused
        assert any("permissions violation for subscription" in e.lower() for e in refused), refused
    finally:
        for nc in (worker, admin_user):
            await nc.close()
