"""The sweeper closes abandoned calls; live and finished calls are left alone."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from dialtone_common import bus
from dialtone_common.db import create_pool
from dialtone_proto import CallEnded, CallStarted, CallStatus, subjects
from dialtone_proto.live import LiveCall
from dialtone_writer import metrics
from dialtone_writer.migrations import apply_migrations
from dialtone_writer.settings import WriterSettings
from dialtone_writer.sweeper import SWEPT_REASON, Sweeper, sweep_events

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def new_call_id() -> str:
    return "CA" + uuid.uuid4().hex


class _StubNats:
    """Just what the sweeper asks of a NATS client outside a sweep."""

    def __init__(self) -> None:
        self.is_connected = True
        self.stats = {"reconnects": 0}

    async def subscribe(self, subject: str, cb) -> object:  # type: ignore[no-untyped-def]
        return object()


# ---- unit --------------------------------------------------------------------------------------


@pytest.mark.unit
def test_closing_events_depend_on_how_far_the_call_got() -> None:
    status, ended = sweep_events("CA1", answered=True, status_known_terminal=False, at=at(5))
    assert (status.id, status.status, status.source, status.at) == ("CA1-swept-status", "completed", "sweeper", at(5))
    assert (ended.id, ended.reason, ended.at) == ("CA1-swept", "swept: no activity", at(5))
    assert sweep_events("CA1", answered=False, status_known_terminal=False, at=at(5))[0].status == "failed"
    # A reported busy / no-answer is the truth: only the end is added.
    [only] = sweep_events("CA1", answered=False, status_known_terminal=True, at=at(5))
    assert isinstance(only, CallEnded)


@pytest.mark.unit
async def test_waits_a_whole_live_window_after_start_and_after_a_reconnect() -> None:
    now = [100.0]
    nc = _StubNats()
    settings = WriterSettings(database_url="postgresql://unused", sweep_live_window_s=20)
    sweeper = Sweeper(None, nc, None, settings, clock=lambda: now[0])  # type: ignore[arg-type]
    assert not sweeper.ready()  # not listening yet
    await sweeper.start()
    now[0] += 19
    assert not sweeper.ready()
    now[0] += 2
    assert sweeper.ready()
    nc.stats["reconnects"] = 1  # heartbeats may have been missed while disconnected
    assert not sweeper.ready()
    now[0] += 21
    assert sweeper.ready()
    nc.is_connected = False
    assert not sweeper.ready()


@pytest.mark.unit
def test_a_call_is_live_while_its_heartbeats_are_fresh() -> None:
    now = [0.0]
    settings = WriterSettings(database_url="postgresql://unused", sweep_live_window_s=20)
    sweeper = Sweeper(None, _StubNats(), None, settings, clock=lambda: now[0])  # type: ignore[arg-type]
    sweeper.heard("CA1")
    now[0] += 15
    sweeper.heard("CA2")
    assert sweeper.live() == {"CA1", "CA2"}
    now[0] += 10
    assert sweeper.live() == {"CA2"}


# ---- integration -------------------------------------------------------------------------------


@pytest.fixture
async def own_pool(database_url: str):
    """A pool on a database of this test's own: the sweeper must not close other tests' sessions."""
    name = f"writer_sweep_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
    try:
        await apply_migrations(dsn)
        pool = await create_pool(dsn, max_size=4)
        try:
            yield pool
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def nc(nats_url: str):
    conn = await bus.connect(nats_url, "sweeper-tests")
    yield conn
    await conn.drain()


def started(call_id: str, direction: str = "inbound") -> CallStarted:
    return CallStarted(id=f"{call_id}-0", call_id=call_id, at=at(1), agent="reception", direction=direction)


def twilio(call_id: str, seq: int, status: str, t: float, **extra) -> CallStatus:  # type: ignore[no-untyped-def]
    return CallStatus(id=f"{call_id}-status-{seq}-{status}-", call_id=call_id, at=at(t), status=status,
                      source="twilio", sequence=seq, direction="outbound", **extra)


@pytest.mark.integration
async def test_abandoned_calls_are_closed_live_and_ended_ones_are_not(
    run_consumer, publish, own_pool, nc, js, nats_url, database_url, poll
) -> None:
    dropped, unanswered, busy, live, ended = (new_call_id() for _ in range(5))
    calls = {
        # A bridge took the call, then died: no call.ended, no more heartbeats.
        dropped: [started(dropped), twilio(dropped, 0, "in-progress", 2), CallStatus(
            id=f"{dropped}-1", call_id=dropped, at=at(30), status="in-progress", source="bridge")],
        # An outbound call that rang out before Twilio reported anything final.
        unanswered: [twilio(unanswered, 0, "initiated", 0), twilio(unanswered, 1, "ringing", 3)],
        # An outbound call Twilio reported busy; no bridge ever saw it, so nothing ends it.
        busy: [twilio(busy, 0, "initiated", 0), twilio(busy, 1, "busy", 4)],
        # A call in progress: quiet on the event stream but its bridge's heartbeats keep coming.
        live: [started(live), twilio(live, 0, "in-progress", 2)],
        ended: [started(ended), CallEnded(id=f"{ended}-9", call_id=ended, at=at(40), reason="caller hung up")],
    }
    consumers = {call_id: await run_consumer(call_id=call_id, db_pool=own_pool) for call_id in calls}
    for call_id, events in calls.items():
        last = 0
        for event in events:
            last = await publish(event)
        await consumers[call_id].settled(last)

    async def heartbeats() -> None:
        beat = LiveCall(call_id=live, agent="reception", started_at=at(1), bridge_id="b1").model_dump_json()
        while True:
            await nc.publish(subjects.live(live), beat.encode())
            await asyncio.sleep(0.2)  # the bridge's heartbeat period, shortened

    settings = WriterSettings(database_url=database_url, nats_url=nats_url, sweep_interval_s=0.2,
                              sweep_after_s=1.0, sweep_live_window_s=1.0)
    swept_before = metrics.REGISTRY.get_sample_value("dialtone_writer_sessions_swept_total") or 0.0
    beating = asyncio.create_task(heartbeats())
    sweeper = Sweeper(own_pool, nc, js, settings)
    await sweeper.start()
    stop = asyncio.Event()
    sweeping = asyncio.create_task(sweeper.run(stop))
    try:
        async def closed() -> bool:
            rows = await own_pool.fetch(
                "SELECT call_sid FROM call_sessions WHERE ended_at IS NOT NULL AND call_sid = ANY($1)",
                [dropped, unanswered, busy])
            return len(rows) == 3

        await poll(closed, 20, "the abandoned calls to be closed")
        assert await own_pool.fetchval(  # the live call was quiet long enough: only its heartbeats saved it
            "SELECT updated_at < now() - interval '1 second' FROM call_sessions WHERE call_sid = $1", live)
        assert await sweeper.sweep_once() == []
    finally:
        stop.set()
        await asyncio.wait_for(sweeping, 5)
        await sweeper.stop()
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating

    rows = {r["call_sid"]: r for r in await own_pool.fetch("SELECT * FROM call_sessions")}
    assert set(rows) == set(calls)
    expect = {  # call: (status, ended_at, end_reason, direction)
        dropped: ("completed", at(30), SWEPT_REASON, "inbound"),
        unanswered: ("failed", at(3), SWEPT_REASON, "outbound"),
        busy: ("busy", at(4), SWEPT_REASON, "outbound"),
        live: ("in-progress", None, None, "inbound"),
        ended: ("completed", at(40), "caller hung up", "inbound"),
    }
    assert {c: (r["status"], r["ended_at"], r["end_reason"], r["direction"]) for c, r in rows.items()} == expect
    sources = {
        r["call_sid"]: r["n"] for r in await own_pool.fetch(
            "SELECT call_sid, count(*) AS n FROM call_status_history WHERE source = 'sweeper' GROUP BY call_sid")
    }
    assert sources == {dropped: 1, unanswered: 1}  # busy kept Twilio's word; live and ended untouched
    swept_events = await own_pool.fetch("SELECT event_id FROM call_events WHERE event_id LIKE '%-swept%'")
    assert {r["event_id"].split("-")[0] for r in swept_events} == {dropped, unanswered, busy}
    assert (metrics.REGISTRY.get_sample_value("dialtone_writer_sessions_swept_total") or 0.0) >= swept_before + 3


@pytest.mark.integration
async def test_writers_sweeping_together_publish_each_event_once(js) -> None:
    call_id = new_call_id()
    acks = []
    for _writer in range(2):  # two writers find the same abandoned call at once
        for event in sweep_events(call_id, answered=True, status_known_terminal=False, at=at(1)):
            acks.append(await js.publish(event.subject, event.model_dump_json().encode(),
                                         headers={"Nats-Msg-Id": event.id}))
    assert [bool(a.duplicate) for a in acks] == [False, False, True, True]
    assert [a.seq for a in acks[2:]] == [a.seq for a in acks[:2]]
