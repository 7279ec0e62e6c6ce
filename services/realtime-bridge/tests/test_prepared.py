"""Prepared sessions: the session opened at a call's voice webhook is this call's, also when the
stream's offer reaches the bridge while the call's record is still being marked."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from dialtone_bridge import prepared as prepared_module
from dialtone_bridge.prepared import PreparedSessions
from dialtone_proto import CallPrepare

pytestmark = [pytest.mark.unit, pytest.mark.asyncio]

CALL = "CA" + "2" * 32
AGENT = SimpleNamespace(name="support")


class SlowBook:
    """A call book whose write of ``prepared_by`` waits until the test lets it through."""

    def __init__(self, result: object) -> None:
        self.result, self.release, self.writing = result, asyncio.Event(), asyncio.Event()

    async def prepared(self, call_id: str, bridge_id: str) -> object:
        self.writing.set()
        await self.release.wait()
        return self.result


class Connection:
    def __init__(self) -> None:
        self.opened, self.closed = asyncio.Event(), False

    async def open(self, spec: object) -> None:
        self.opened.set()

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[Connection]:
    made: list[Connection] = []

    def model_connection(ctx: object, agent: object, log: object) -> Connection:
        made.append(Connection())
        return made[-1]

    async def session_spec(ctx: object, agent: object) -> dict:
        return {}

    monkeypatch.setattr(prepared_module, "model_connection", model_connection)
    monkeypatch.setattr(prepared_module, "session_spec", session_spec)
    return made


def sessions(book: SlowBook, ttl_s: float = 30.0) -> PreparedSessions:
    ctx = SimpleNamespace(bridge_id="bridge-1", settings=SimpleNamespace(prepare_ttl_s=ttl_s),
                          agents=SimpleNamespace(choose=lambda name, to_number: AGENT))  # fmt: skip
    return PreparedSessions(ctx, book, lambda: True)  # type: ignore[arg-type]  # fakes: only what preparing reads


def webhook() -> bytes:
    return CallPrepare(call_id=CALL, to_number="+15005550006", agent="support").model_dump_json().encode()


async def test_an_offer_that_comes_while_the_record_is_written_takes_the_session_opening(connections):
    book = SlowBook(result=object())
    prepared = sessions(book)
    preparing = asyncio.create_task(prepared.on_prepare(webhook()))
    await book.writing.wait()  # the record is being marked; the stream's offer arrives now
    opening = prepared.take(CALL, AGENT)  # type: ignore[arg-type]  # a fake agent: only its name is read
    assert opening is not None
    book.release.set()
    await preparing
    assert await opening is connections[0] and not connections[0].closed
    assert len(connections) == 1 and len(prepared) == 0
    await prepared.close()
    assert not connections[0].closed  # it belongs to the call now


async def test_a_session_whose_stream_came_first_waits_for_an_offer_then_expires(connections):
    book = SlowBook(result=None)  # the record was streaming already: no offer will name us
    book.release.set()
    prepared = sessions(book, ttl_s=0.2)
    await prepared.on_prepare(webhook())
    assert len(prepared) == 1  # an offer through the queue group may still take it
    await asyncio.sleep(0.4)
    await asyncio.wait_for(asyncio.gather(*prepared._tasks), 5)
    assert len(prepared) == 0 and connections[0].closed
