"""Integration tests of the consumer: real JetStream, real PostgreSQL, the consumer as a task."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import orjson
import pytest
from dialtone_common.db import create_pool
from dialtone_proto import (
    STREAM_NAME,
    AgentChanged,
    CallEnded,
    CallMetric,
    CallStarted,
    CallStatus,
    CallTransferred,
    OutcomeSet,
    ToolCalled,
    TranscriptLine,
    TurnMeasured,
    UsageReported,
    decode_event,
    subjects,
)
from dialtone_writer import metrics
from dialtone_writer.consumer import Consumer, lag_seconds
from dialtone_writer.settings import WriterSettings
from dialtone_writer.store import write_events

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def new_call_id() -> str:
    return "CA" + uuid.uuid4().hex


def metric(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def line(call_id: str, n: int, seq: int, role: str = "caller", text: str | None = None, t: float = 0.0):
    return TranscriptLine(
        id=f"{call_id}-{n}", call_id=call_id, at=at(t or seq + 1), item_id=f"item_{seq}", seq=seq,
        role=role, text=text or f"line {seq}", agent="reception",
    )


def full_call(call_id: str) -> list:
    """The events of one whole call, as the bridge and gateway publish them."""
    return [
        CallStarted(id=f"{call_id}-0", call_id=call_id, at=at(0), agent="reception", stream_sid="MZ1",
                    from_number="+15550001111", to_number="+15550002222", direction="inbound"),
        CallStatus(id=f"{call_id}-status-1-in-progress", call_id=call_id, at=at(0.5), status="in-progress",
                   source="twilio", sequence=1),
        TranscriptLine(id=f"{call_id}-1", call_id=call_id, at=at(1), item_id="item_a", seq=0, role="agent",
                       text="Hello, Acme dental, how can I help?", agent="reception"),
        TranscriptLine(id=f"{call_id}-2", call_id=call_id, at=at(4), item_id="item_b", seq=1, role="caller",
                       text="I need to book a cleaning", agent="reception"),
        ToolCalled(id=f"{call_id}-3", call_id=call_id, at=at(5), tool_call_id="call_1", seq=2,
                   name="find_slots", agent="reception", arguments={"day": "monday"}, ok=True,
                   result={"slots": ["09:00", "11:30"]}, duration_ms=12.5),
        AgentChanged(id=f"{call_id}-4", call_id=call_id, at=at(6), from_agent="reception", to_agent="booking"),
        TranscriptLine(id=f"{call_id}-5", call_id=call_id, at=at(8), item_id="item_c", seq=3, role="agent",
                       text="Monday at nine works.", agent="booking", interrupted=True),
        TranscriptLine(id=f"{call_id}-12", call_id=call_id, at=at(9), item_id="item_d", seq=4, role="caller",
                       text="", agent="booking", untranscribed=True),
        UsageReported(id=f"{call_id}-6", call_id=call_id, at=at(8), source="response", ref="resp_1",
                      model="gpt-realtime", cost_usd=0.0125,
                      tokens={"text_in": 30, "text_cached": 10, "audio_in": 60, "text_out": 10, "audio_out": 40}),
        UsageReported(id=f"{call_id}-7", call_id=call_id, at=at(9), source="transcription", ref="item_b",
                      model="gpt-4o-transcribe", cost_usd=0.0005, tokens={"audio_in": 25, "text_out": 5}),
        CallMetric(id=f"{call_id}-8", call_id=call_id, at=at(9), name="first_agent_audio_ms", value=420.0),
        OutcomeSet(id=f"{call_id}-9", call_id=call_id, at=at(10), outcome="booked", detail="Mon 09:00"),
        CallTransferred(id=f"{call_id}-10", call_id=call_id, at=at(11), target="+15550003333", agent="booking"),
        CallEnded(id=f"{call_id}-11", call_id=call_id, at=at(12), reason="transferred"),
        CallStatus(id=f"{call_id}-status-2-completed", call_id=call_id, at=at(13), status="completed",
                   source="twilio", sequence=2, duration_s=13),
    ]


async def session(pool: asyncpg.Pool, call_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM call_sessions WHERE call_sid = $1", call_id)


async def test_full_call_produces_the_expected_session(run_consumer, publish, pool) -> None:
    call_id = new_call_id()
    rc = await run_consumer()  # every call's events, as in production
    lagged = metric("dialtone_writer_lag_seconds_count")
    last = 0
    for event in full_call(call_id):
        last = await publish(event)
    await rc.settled(last)
    assert metric("dialtone_writer_lag_seconds_count") - lagged == 15  # each event's lag, once

    s = await session(pool, call_id)
    assert s is not None
    assert (s["agent"], s["direction"], s["from_number"], s["to_number"], s["stream_sid"]) == (
        "reception", "inbound", "+15550001111", "+15550002222", "MZ1")
    assert (s["started_at"], s["ended_at"], s["end_reason"]) == (at(0), at(12), "transferred")
    assert (s["status"], s["outcome"], s["outcome_detail"]) == ("completed", "booked", "Mon 09:00")
    assert s["transferred_to"] == "+15550003333"
    assert [(t["seq"], t["role"], t["agent"], t["interrupted"], t["untranscribed"]) for t in s["transcript"]] == [
        (0, "agent", "reception", False, False), (1, "caller", "reception", False, False),
        (3, "agent", "booking", True, False), (4, "caller", "booking", False, True)]
    assert s["transcript"][1]["text"] == "I need to book a cleaning"
    assert s["transcript"][3]["text"] == ""  # the caller spoke; the words have no text
    assert s["usage"] == {"input_tokens": 100, "output_tokens": 50, "input_text_tokens": 40,
                          "input_audio_tokens": 60, "cached_tokens": 10, "output_text_tokens": 10,
                          "output_audio_tokens": 40, "responses": 1, "transcription_tokens": 30}
    assert s["cost_usd"] == Decimal("0.013")
    assert s["metrics"] == {"first_agent_audio_ms": 420.0}

    tool = await pool.fetchrow("SELECT * FROM tool_calls WHERE call_sid = $1", call_id)
    assert (tool["name"], tool["arguments"], tool["result"], tool["ok"]) == (
        "find_slots", {"day": "monday"}, {"slots": ["09:00", "11:30"]}, True)
    history = await pool.fetch("SELECT status FROM call_status_history WHERE call_sid = $1 ORDER BY at", call_id)
    assert [r["status"] for r in history] == ["in-progress", "completed"]
    changes = await pool.fetch("SELECT from_agent, to_agent FROM agent_changes WHERE call_sid = $1", call_id)
    assert [tuple(r) for r in changes] == [("reception", "booking")]
    assert await pool.fetchval("SELECT count(*) FROM call_events WHERE call_sid = $1", call_id) == 15


async def test_republished_events_never_double_anything(run_consumer, publish, pool) -> None:
    call_id = new_call_id()
    rc = await run_consumer(call_id)
    duplicates_before = metric("dialtone_writer_duplicates_skipped_total")
    events = full_call(call_id)
    last = 0
    for event in events:
        await publish(event)
    # A different Nats-Msg-Id gets past JetStream's dedupe window; the writer's ledger must catch it.
    for event in events:
        last = await publish(event, msg_id=f"{event.id}-republished")
    await rc.settled(last)

    s = await session(pool, call_id)
    assert len(s["transcript"]) == 4
    assert s["cost_usd"] == Decimal("0.013")
    assert s["usage"]["responses"] == 1
    assert await pool.fetchval("SELECT count(*) FROM tool_calls WHERE call_sid = $1", call_id) == 1
    assert await pool.fetchval("SELECT count(*) FROM call_status_history WHERE call_sid = $1", call_id) == 2
    assert metric("dialtone_writer_duplicates_skipped_total") - duplicates_before == len(events)


async def test_redelivery_after_commit_without_ack_changes_nothing(run_consumer, publish, pool, js) -> None:
    """The crash window: a batch committed, then the writer died before acknowledging it."""
    call_id = new_call_id()
    durable = f"writer-test-{uuid.uuid4().hex[:12]}"
    probe = await js.pull_subscribe(
        f"{subjects.PREFIX}.events.{call_id}.>", durable=durable, stream=STREAM_NAME)
    for n in range(3):
        await publish(line(call_id, n, seq=n))
    msgs = await probe.fetch(3, timeout=5)

    async with pool.acquire() as conn:
        await write_events(conn, [decode_event(m.data) for m in msgs])
    for m in msgs:
        await m.nak()  # what JetStream does by itself once ack_wait passes without an ack
    await probe.unsubscribe()

    redeliveries_before = metric("dialtone_writer_redeliveries_total")
    rc = await run_consumer(call_id, durable_name=durable)
    await rc.settled(msgs[-1].metadata.sequence.stream)

    s = await session(pool, call_id)
    assert [t["seq"] for t in s["transcript"]] == [0, 1, 2]
    assert await pool.fetchval("SELECT count(*) FROM transcript_lines WHERE call_sid = $1", call_id) == 3
    assert metric("dialtone_writer_redeliveries_total") - redeliveries_before == 3


async def test_out_of_order_lines_end_in_conversation_order(run_consumer, publish, pool) -> None:
    call_id = new_call_id()
    rc = await run_consumer(call_id, batch_size=2)  # several batches, each with a partial view
    last = 0
    # Lines before call.started, and caller lines finishing after the agent's reply to them.
    for n, seq in enumerate([3, 1, 0, 4, 2]):
        last = await publish(line(call_id, n + 1, seq, role="agent" if seq % 2 == 0 else "caller", t=10 - seq))
    last = await publish(CallStarted(id=f"{call_id}-0", call_id=call_id, at=at(20), agent="reception"))
    last = await publish(CallStatus(id=f"{call_id}-s-2", call_id=call_id, at=at(30), status="completed", source="twilio"))
    last = await publish(CallStatus(id=f"{call_id}-s-1", call_id=call_id, at=at(25), status="ringing", source="twilio"))
    last = await publish(CallEnded(id=f"{call_id}-9", call_id=call_id, at=at(29), reason="hangup"))
    await rc.settled(last)

    s = await session(pool, call_id)
    assert [t["seq"] for t in s["transcript"]] == [0, 1, 2, 3, 4]
    assert s["agent"] == "reception"
    assert s["started_at"] == at(6)  # the earliest event seen, here a line that beat call.started
    assert s["status"] == "completed"  # neither the late "ringing" nor call.ended moved it


async def test_call_ended_does_not_hide_a_reported_failure(run_consumer, publish, pool) -> None:
    call_id = new_call_id()
    rc = await run_consumer(call_id)
    await publish(CallEnded(id=f"{call_id}-1", call_id=call_id, at=at(10), reason="stream stopped"))
    last = await publish(CallStatus(id=f"{call_id}-s", call_id=call_id, at=at(5), status="failed", source="twilio"))
    await rc.settled(last)
    assert (await session(pool, call_id))["status"] == "failed"


async def test_malformed_messages_are_terminated_and_good_ones_still_land(run_consumer, publish, pool, js) -> None:
    call_id = new_call_id()
    rc = await run_consumer(call_id)
    bad_before = metric("dialtone_writer_bad_events_total")
    subject = subjects.event(call_id, "transcript.line")
    await js.publish(subject, b"not json at all", headers={"Nats-Msg-Id": f"{call_id}-junk"})
    missing = orjson.dumps({"v": 1, "type": "transcript.line", "id": f"{call_id}-x", "call_id": call_id})
    await js.publish(subject, missing, headers={"Nats-Msg-Id": f"{call_id}-x"})
    # Valid JSON, but PostgreSQL cannot store a NUL character: rejected alone, not the whole batch.
    await publish(line(call_id, 1, seq=0, text="nul \x00 byte"))
    last = await publish(line(call_id, 2, seq=1, text="still here"))
    await rc.settled(last)

    s = await session(pool, call_id)
    assert [t["text"] for t in s["transcript"]] == ["still here"]
    assert metric("dialtone_writer_bad_events_total") - bad_before == 3
    assert (await rc.info()).num_redelivered == 0


async def test_nothing_is_acked_while_the_database_is_down(run_consumer, publish, pool, pg_proxy, poll) -> None:
    proxy, dsn = pg_proxy
    call_id = new_call_id()
    writer_pool = await create_pool(dsn, max_size=2)
    try:
        rc = await run_consumer(call_id, db_pool=writer_pool, ack_wait_s=5.0)
        await proxy.cut()
        errors_before = metric("dialtone_writer_db_errors_total")
        last = 0
        for n in range(4):
            last = await publish(line(call_id, n, seq=n))

        async def failing_and_unacked():
            info = await rc.info()
            assert info.ack_floor.stream_seq < last - 3, "a message was acked without a commit"
            return metric("dialtone_writer_db_errors_total") - errors_before >= 2 and info.num_redelivered > 0

        await poll(failing_and_unacked, what="writes to fail and messages to be redelivered")
        assert rc.consumer.health() == "database unavailable"
        assert await session(pool, call_id) is None

        await proxy.open()  # PostgreSQL is back
        await rc.settled(last, within=30)
        s = await session(pool, call_id)
        assert [t["seq"] for t in s["transcript"]] == [0, 1, 2, 3]
        assert rc.consumer.health() is None
    finally:
        await writer_pool.close()


async def test_consumer_pending_is_what_the_stream_holds_beyond_the_batch(
    publish, pool, js, nats_url: str, database_url: str
) -> None:
    call_id = new_call_id()
    durable = f"writer-test-{uuid.uuid4().hex[:12]}"
    probe = await js.pull_subscribe(f"{subjects.PREFIX}.events.{call_id}.>", durable=durable, stream=STREAM_NAME)
    try:
        for n in range(5):
            await publish(line(call_id, n, seq=n))
        msgs = await probe.fetch(2, timeout=5)
        settings = WriterSettings(database_url=database_url, nats_url=nats_url, durable_name=durable)
        assert await Consumer(pool, js, settings).process(msgs)
        assert metric("dialtone_writer_consumer_pending") == 3  # five published, two in this batch
        assert await Consumer(pool, js, settings).process(await probe.fetch(3, timeout=5))
        assert metric("dialtone_writer_consumer_pending") == 0
    finally:
        await probe.unsubscribe()
        await js.delete_consumer(STREAM_NAME, durable)

@pytest.mark.unit
def test_writer_lag_runs_from_the_events_own_time_to_the_commit() -> None:
    event = line("CA1", 1, 0, t=10)
    assert lag_seconds(event, at(12.5)) == 2.5
    assert lag_seconds(event, at(9)) == 0.0  # a publisher's clock ahead of ours is no negative lag
    naive = line("CA1", 2, 1, t=10).model_copy(update={"at": at(10).replace(tzinfo=None)})
    assert lag_seconds(naive, at(11)) == 1.0  # a time without zone is UTC


async def test_a_cut_line_wins_over_the_whole_one_whatever_order_they_are_written_in(pool) -> None:
    """A barge-in corrects a line already published (rev 1): redelivery or a second writer may
    apply the two in either order, and the transcript must end cut either way."""
    for order in ((0, 1), (1, 0)):
        call_id = new_call_id()
        whole = TranscriptLine(id=f"{call_id}-1", call_id=call_id, at=at(1), item_id="a1", seq=0, role="agent",
                               text="We are open from nine to five.", agent="reception", offset_ms=2000.0,
                               heard_ms=2400.0, audio_ms=2400.0)
        cut = TranscriptLine(id=f"{call_id}-2", call_id=call_id, at=at(2), item_id="a1", seq=0, role="agent",
                             text="We are open", agent="reception", interrupted=True, rev=1, offset_ms=2000.0,
                             heard_ms=900.0, audio_ms=2400.0, full_text="We are open from nine to five.")
        for n in order:
            async with pool.acquire() as conn:
                await write_events(conn, [(whole, cut)[n]])
        row = await pool.fetchrow("SELECT * FROM transcript_lines WHERE call_sid = $1", call_id)
        assert (row["text"], row["interrupted"], row["rev"], row["heard_ms"], row["audio_ms"], row["full_text"]) == (
            "We are open", True, 1, 900.0, 2400.0, "We are open from nine to five."), order
        [entry] = (await session(pool, call_id))["transcript"]
        assert (entry["text"], entry["heard_ms"], entry["offset_ms"], entry["full_text"]) == (
            "We are open", 900.0, 2000.0, "We are open from nine to five.")


async def test_turns_are_stored_one_row_per_event(pool) -> None:
    call_id = new_call_id()
    turns = [
        TurnMeasured(id=f"{call_id}-1", call_id=call_id, at=at(5), turn=0, item_id="a1", offset_ms=4000.0,
                     sent_ms=800.0, heard_ms=950.0, tool_ms=0.0),
        TurnMeasured(id=f"{call_id}-2", call_id=call_id, at=at(9), turn=1, item_id="a2", sent_ms=1500.0,
                     tool_ms=900.0, tools=2),  # talked over before it was heard
    ]
    async with pool.acquire() as conn:
        await write_events(conn, turns)
        await write_events(conn, turns)  # redelivered: nothing doubles
    rows = await pool.fetch("SELECT turn, item_id, offset_ms, sent_ms, heard_ms, tool_ms, tools FROM call_turns"
                            " WHERE call_sid = $1 ORDER BY at", call_id)
    assert [tuple(r) for r in rows] == [(0, "a1", 4000.0, 800.0, 950.0, 0.0, 0), (1, "a2", None, 1500.0, None, 900.0, 2)]


async def test_the_cost_breakdown_is_the_sum_of_the_events_split(pool) -> None:
    call_id = new_call_id()
    events = [
        UsageReported(id=f"{call_id}-1", call_id=call_id, at=at(1), source="response", ref="r1", model="m",
                      cost_usd=0.0532, tokens={"audio_in": 1000, "audio_cached": 500, "audio_out": 300},
                      costs={"audio_in": 0.032, "audio_cached": 0.0002, "audio_out": 0.0192}),
        UsageReported(id=f"{call_id}-2", call_id=call_id, at=at(2), source="response", ref="r2", model="m",
                      cost_usd=0.00016, tokens={"text_in": 10, "text_cached": 100, "text_out": 3},
                      costs={"text_in": 0.00004, "text_cached": 0.00004, "text_out": 0.000072}),
        UsageReported(id=f"{call_id}-3", call_id=call_id, at=at(3), source="transcription", ref="u1", model="t",
                      cost_usd=0.00051, tokens={"audio_in": 120, "text_out": 30},
                      costs={"audio_in": 0.00036, "text_out": 0.00015}),
    ]
    async with pool.acquire() as conn:
        await write_events(conn, events)
    breakdown = (await session(pool, call_id))["cost_breakdown"]
    assert {k: float(v) for k, v in breakdown.items()} == pytest.approx({
        "audio_in_usd": 0.032, "audio_in_tokens": 1000, "audio_out_usd": 0.0192, "audio_out_tokens": 300,
        "cached_usd": 0.00024, "cached_tokens": 600, "text_in_usd": 0.00004, "text_in_tokens": 10,
        "text_out_usd": 0.000072, "text_out_tokens": 3, "transcription_usd": 0.00051, "transcription_tokens": 150,
    })  # fmt: skip


async def test_a_test_calls_run_is_kept_on_its_session(pool) -> None:
    """dialtone eval marks its calls with the variable dialtone_eval (docs/CONTRACTS.md, Test calls)."""
    test_call, real_call = new_call_id(), new_call_id()
    async with pool.acquire() as conn:
        await write_events(conn, [
            CallStarted(id=f"{test_call}-0", call_id=test_call, at=at(0), agent="support",
                        variables={"dialtone_eval": "run-42", "dialtone_mocks": "{}"}),
            CallStarted(id=f"{real_call}-0", call_id=real_call, at=at(0), agent="support", variables={"tier": "gold"}),
        ])  # fmt: skip
    assert (await session(pool, test_call))["test_run"] == "run-42"
    assert (await session(pool, real_call))["test_run"] is None


async def test_settings_changed_since_the_consumer_was_made_apply_at_the_next_start(run_consumer):
    """A writer restarted with another ack wait or batch size uses them: binding to the durable
    consumer alone kept the first writer's (a crashed event waited the old ack wait)."""
    first = await run_consumer(ack_wait_s=30.0, batch_size=256)
    first.stop.set()
    assert first.task is not None
    await asyncio.wait_for(first.task, 10)
    again = await run_consumer(durable_name=first.durable, ack_wait_s=3.0, batch_size=8)
    config = (await again.info()).config
    assert (config.ack_wait, config.max_ack_pending) == (3.0, 32)
