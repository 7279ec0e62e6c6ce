"""The analysis worker's job in PostgreSQL: an answer stored before a crash is published again
under the same id (never asked twice); a finished job is never run again; an agent without
[analysis] is not analysed; the stored call reads as the model's input."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from dialtone_common.analysis_config import AnalysisConfig
from dialtone_proto import CallAnalyzed, CallEnded, decode_event, encode_event
from dialtone_writer.analyst import Analyst, event_id, transcript_text
from dialtone_writer.settings import WriterSettings

pytestmark = pytest.mark.integration


class NoClient:
    """An OpenAI client that must not be used."""

    @property
    def responses(self):
        raise AssertionError("the model was asked again")


async def _ended_call(pool, agent: str) -> CallEnded:
    sid = "CA" + uuid.uuid4().hex
    at = datetime.now(UTC) - timedelta(seconds=10)
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO call_sessions (call_sid, started_at, agent, ended_at) VALUES ($1, $2, $3, $2)",
                           sid, at, agent)
    return CallEnded(id=f"{sid}-ended", call_id=sid, at=at, reason="caller hung up")


async def test_a_stored_answer_is_published_again_under_the_same_id_and_the_job_closed(
    js, pool, database_url: str, nats_url: str
) -> None:
    settings = WriterSettings(database_url=database_url, nats_url=nats_url, analysis_delay_s=0)
    analyst = Analyst(pool, js, settings, {"shop": AnalysisConfig("shop")}, NoClient())  # type: ignore[arg-type]
    ended = await _ended_call(pool, "shop")
    event = CallAnalyzed(id=event_id(ended.call_id), call_id=ended.call_id, at=datetime.now(UTC),
                         analysis={"status": "done", "summary": "s", "verdict": {"success": True, "reason": "r"}},
                         model="gpt-5-mini", cost_usd=0.001, tokens={"input": 10, "cached": 0, "output": 5})


    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO analysis_jobs (call_sid, agent, model, attempts, result) VALUES ($1, 'shop',"
                           " 'gpt-5-mini', 1, $2)", ended.call_id, orjson.loads(encode_event(event)))
    sub = await js.subscribe(event.subject)
    assert await analyst.analyse(ended, asyncio.Event()) == ("ack", 0.0)
    msg = await sub.next_msg(timeout=5)
    assert msg.headers["Nats-Msg-Id"] == f"analysis-{ended.call_id}" and decode_event(msg.data) == event
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT status FROM analysis_jobs WHERE call_sid = $1", ended.call_id) == "done"
    # Done: a redelivered call.ended changes nothing and asks nothing.
    assert await analyst.analyse(ended, asyncio.Event()) == ("ack", 0.0)
    await sub.unsubscribe()


async def test_an_agent_without_analysis_and_an_unwritten_end(js, pool, database_url: str, nats_url: str) -> None:
    settings = WriterSettings(database_url=database_url, nats_url=nats_url, analysis_delay_s=0)
    analyst = Analyst(pool, js, settings, {"shop": AnalysisConfig("shop")}, NoClient())  # type: ignore[arg-type]
    other = await _ended_call(pool, "front-desk")
    assert await analyst.analyse(other, asyncio.Event()) == ("ack", 0.0)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM analysis_jobs WHERE call_sid = $1", other.call_id) == 0
    unknown = CallEnded(id="x", call_id="CA" + uuid.uuid4().hex, at=datetime.now(UTC), reason="r")
    verdict, delay = await analyst.analyse(unknown, asyncio.Event())
    assert verdict == "nak" and delay > 0


def test_the_model_reads_lines_and_tool_calls_in_order() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    text = transcript_text({
        "agent": "shop", "direction": "inbound", "duration_s": 42.0, "end_reason": "caller hung up",
        "outcome": "resolved",
        "transcript": [{"role": "agent", "text": "Hello.", "seq": 0, "at": at},
                       {"role": "caller", "text": "", "untranscribed": True, "seq": 1, "at": at},
                       {"role": "caller", "text": "Order A-1?", "seq": 3, "at": at}],
        "tool_calls": [{"name": "check_order_status", "arguments": {"id": "A-1"}, "ok": True,
                        "result": {"status": "shipped"}, "seq": 4, "at": at}],
    })
    order = [text.index("Agent: Hello."), text.index("Caller: (inaudible)"), text.index("Caller: Order A-1?"),
             text.index('Tool check_order_status({"id":"A-1"}) -> ok: {"status":"shipped"}')]
    assert order == sorted(order)
    assert "Duration: 42 s" in text and "Outcome set by the agent: resolved." in text
