"""Coalesced bus writes never reorder or drop a call's frames, and never hold one beyond its
budget; a batch reaches NATS as one write."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import nats
import nats.errors
import pytest
from dialtone_common.coalesce import Coalescer
from dialtone_common.embedded import embedded_nats

pytestmark = pytest.mark.integration


class RecordingBus:
    """Stands in for the NATS client: remembers when each frame was published."""

    def __init__(self, fail_on: set[bytes] | None = None) -> None:
        self.published: list[tuple[float, str, bytes]] = []
        self.fail_on = fail_on or set()

    async def publish(self, subject: str, data: bytes) -> None:
        if data in self.fail_on:
            raise nats.errors.ConnectionReconnectingError
        self.published.append((asyncio.get_running_loop().time(), subject, data))


async def loop_lag(stop: asyncio.Event, lags: list[float]) -> None:
    """How late the event loop runs a 1 ms timer: the slack any budget has on this machine now."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        asked = loop.time()
        await asyncio.sleep(0.001)
        lags.append(loop.time() - asked - 0.001)


async def test_many_calls_frames_keep_their_order_all_arrive_and_none_waits_past_the_budget():
    budget = 0.01
    bus = RecordingBus()
    coalescer = Coalescer(bus, budget)  # type: ignore[arg-type]  # a stand-in for the client
    loop = asyncio.get_running_loop()
    given: dict[bytes, float] = {}
    stop, lags = asyncio.Event(), []
    probe = asyncio.create_task(loop_lag(stop, lags))
    rng = random.Random(7)

    async def call(n: int) -> None:
        for seq in range(150):
            frame = f"{n}:{seq}".encode()
            given[frame] = loop.time()
            coalescer.publish(f"dt.call.{n}.in", frame)
            await asyncio.sleep(rng.uniform(0, 0.004))

    await asyncio.gather(*(call(n) for n in range(40)))
    await coalescer.flush()
    stop.set()
    await probe

    assert len(bus.published) == 40 * 150  # nothing dropped, nothing doubled
    for n in range(40):
        seqs = [int(data.split(b":")[1]) for _, subject, data in bus.published if subject == f"dt.call.{n}.in"]
        assert seqs == list(range(150)), f"call {n} reordered"
    # Overall order is the order given, too (one subject's frames can only be in order if all are).
    assert [data for _, _, data in bus.published] == sorted(given, key=given.__getitem__)
    waits = [at - given[data] for at, _, data in bus.published]
    slack = max(lags) + 0.002
    assert max(waits) <= budget + slack, (max(waits), slack)
    assert coalescer.batches < len(bus.published) / 5  # and they were coalesced: many frames a batch


async def test_a_full_batch_goes_at_once_and_a_refused_frame_is_counted_not_hiding_the_rest():
    refused: list[str] = []
    bus = RecordingBus(fail_on={b"x" * 10 + b"2"})
    coalescer = Coalescer(bus, 60.0, max_bytes=40, on_error=lambda subject, exc: refused.append(subject))  # type: ignore[arg-type]
    for i in range(4):
        coalescer.publish("dt.call.a.in", b"x" * 10 + str(i).encode())  # 11 bytes each: the 4th fills it
    await asyncio.sleep(0.05)  # far less than the 60 s budget: sent because the batch was full
    assert [data[-1:] for _, _, data in bus.published] == [b"0", b"1", b"3"]
    assert refused == ["dt.call.a.in"]
    coalescer.publish("dt.call.a.in", b"late")
    assert coalescer.held == 1
    await coalescer.flush()
    assert bus.published[-1][2] == b"late"


@pytest.fixture
def nats_url(tmp_path) -> Iterator[str]:  # noqa: ANN001 - pytest's tmp_path
    with embedded_nats(tmp_path) as url:
        yield url


async def test_frames_through_a_real_nats_server_arrive_in_order(nats_url: str):
    publisher, subscriber = await nats.connect(nats_url), await nats.connect(nats_url)
    got: dict[str, list[int]] = {}
    done = asyncio.Event()

    async def on_frame(msg) -> None:  # noqa: ANN001 - nats-py's Msg
        got.setdefault(msg.subject, []).append(int(msg.data))
        if sum(map(len, got.values())) == 20 * 100:
            done.set()

    await subscriber.subscribe("dt.call.*.in", cb=on_frame)
    await subscriber.flush()
    coalescer = Coalescer(publisher)
    for seq in range(100):
        for n in range(20):
            coalescer.publish(f"dt.call.{n}.in", str(seq).encode())
        await asyncio.sleep(0.0005)
    await coalescer.flush()
    await asyncio.wait_for(done.wait(), 10)
    assert all(got[f"dt.call.{n}.in"] == list(range(100)) for n in range(20))
    assert coalescer.batches <= 100  # 2,000 frames in at most one batch per round
    await publisher.close()
    await subscriber.close()
