"""Call records in a real NATS KV bucket: one stream per call, changes only by compare-and-set."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from dialtone_common import bus
from dialtone_common.callbook import CallBook, new_record

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

KEY_A, KEY_B, KEY_C = "a" * 22, "b" * 22, "c" * 22


@pytest.fixture
async def book(nats_url: str) -> AsyncIterator[CallBook]:
    nc = await nats.connect(nats_url)
    try:
        yield CallBook(await bus.ensure_calls_bucket(nc.jetstream()))
    finally:
        await nc.close()


def _sid(n: int) -> str:
    import secrets

    return f"CA{n}" + secrets.token_hex(15)


async def test_a_webhook_record_is_claimed_by_exactly_one_of_two_racing_streams(book: CallBook) -> None:
    sid = _sid(1)
    await book.register(new_record(sid, from_number="+15550001", to_number="+15550002", agent="support"))

    results = await asyncio.gather(book.claim(sid, KEY_A, "gw-1"), book.claim(sid, KEY_B, "gw-2"))

    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    record = await book.get(sid)
    assert record is not None and record.state == "streaming" and record.stream_key == winners[0].stream_key
    assert record.from_number == "+15550001"


async def test_a_call_without_a_webhook_cannot_be_claimed(book: CallBook) -> None:
    assert await book.claim(_sid(2), KEY_A, "gw-1") is None


async def test_the_first_webhook_of_a_call_wins(book: CallBook) -> None:
    sid = _sid(3)
    await book.register(new_record(sid, from_number="+15550001", agent="support"))

    # A second webhook (a replay whose signed string was re-cut into other parameters) changes nothing.
    kept = await book.register(new_record(sid, from_number="+15559999", agent="sales"))
    assert (kept.state, kept.from_number, kept.agent) == ("pending", "+15550001", "support")
    await book.claim(sid, KEY_A, "gw-1")
    kept = await book.register(new_record(sid, from_number="+15559999"))
    assert kept.state == "streaming" and kept.from_number == "+15550001"


async def test_one_bridge_only_takes_an_offer_even_when_two_see_it(book: CallBook) -> None:
    sid = _sid(5)
    await book.register(new_record(sid))
    await book.claim(sid, KEY_A, "gw-1")

    results = await asyncio.gather(book.assign(sid, KEY_A, 0, "bridge-1"), book.assign(sid, KEY_A, 0, "bridge-2"))
    assert len([r for r in results if r is not None]) == 1
    winner = next(r for r in results if r is not None)
    assert await book.assign(sid, KEY_A, 0, winner.bridge_id or "") is not None  # the winner may retry
    assert await book.assign(sid, KEY_A, 1, winner.bridge_id or "") is None  # not an epoch the record has
    # Re-keyed for a new epoch, the call is free for any bridge again, and the old holder no longer holds it.
    moved = await book.rekey(sid, KEY_A, KEY_B, 1, "gw-1")
    assert moved is not None and moved.bridge_id is None
    assert not moved.held_by(KEY_A, 0, winner.bridge_id or "")
    taken = await book.assign(sid, KEY_B, 1, "bridge-3")
    assert taken is not None and taken.held_by(KEY_B, 1, "bridge-3")


async def test_rekey_needs_the_current_key_and_an_ended_call_stays_ended(book: CallBook) -> None:
    sid = _sid(4)
    await book.register(new_record(sid))
    await book.claim(sid, KEY_A, "gw-1")

    assert await book.rekey(sid, KEY_B, KEY_C, 1, "gw-1") is None  # not the holder's key
    moved = await book.rekey(sid, KEY_A, KEY_B, 1, "gw-1")
    assert moved is not None and (moved.stream_key, moved.epoch) == (KEY_B, 1)
    assert await book.end(sid, {KEY_A}) is None  # the old key no longer speaks for the call
    ended = await book.end(sid, {KEY_A, KEY_B})
    assert ended is not None and ended.state == "ended"
    assert await book.claim(sid, KEY_C, "gw-2") is None


async def test_a_moving_call_is_claimed_only_by_its_move_url_once(book: CallBook) -> None:
    sid, move, other = _sid(7), "m" * 22, "n" * 22
    await book.register(new_record(sid))
    await book.claim(sid, KEY_A, "gw-1")
    assert await book.start_move(sid, KEY_A, "gw-2", move) is None  # not that gateway's stream
    moving = await book.start_move(sid, KEY_A, "gw-1", move)
    assert moving is not None and moving.state == "moving" and moving.move_id == move
    assert await book.claim(sid, KEY_B, "gw-2") is None  # the webhook's URL cannot take it
    assert await book.claim_move(sid, other, "gw-2") is None  # nor another move's URL
    assert await book.claim_move(sid, move, "gw-2") is None  # not before the old stream stopped
    stopped = await book.move_stopped(sid, move, seq=120, ts=2400, at=1.5)
    assert stopped is not None and (stopped.moved_seq, stopped.moved_ts) == (120, 2400)
    results = await asyncio.gather(book.claim_move(sid, move, "gw-2"), book.claim_move(sid, move, "gw-3"))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1 and winners[0].state == "streaming" and winners[0].stream_key == KEY_A
    assert winners[0].move_id is None and winners[0].gateway_id in ("gw-2", "gw-3")
    assert winners[0].moved_from == "gw-1"
    assert await book.claim_move(sid, move, "gw-4") is None  # used once


async def test_a_cancelled_move_leaves_the_call_with_its_stream(book: CallBook) -> None:
    sid, move = _sid(8), "m" * 22
    await book.register(new_record(sid))
    await book.claim(sid, KEY_A, "gw-1")
    await book.start_move(sid, KEY_A, "gw-1", move)
    back = await book.cancel_move(sid, move)
    assert back is not None and back.state == "streaming" and back.gateway_id == "gw-1" and back.move_id is None
    assert await book.claim_move(sid, move, "gw-2") is None
