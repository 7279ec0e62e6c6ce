"""Warm Realtime sockets (REALTIME_WARM_SOCKETS), against the Realtime simulator: a call takes a
socket that was opened before it, configured for its agent then; the pool refills; a socket too
old or closed by the server is never handed out; closing the pool leaves no socket open."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from dialtone_bridge import metrics as m
from dialtone_bridge.agents import Agent
from dialtone_bridge.engine import SessionSpec
from dialtone_bridge.realtime_engine import RealtimeConnection
from dialtone_bridge.realtime_warm import WarmSockets
from dialtone_sim.polling import poll
from dialtone_sim.realtime import RealtimeSimulator

pytestmark = pytest.mark.integration

MODEL = "gpt-realtime"
CONNECT_DELAY_S = 0.6  # the simulator's socket set-up plus first update
LOG = logging.LoggerAdapter(logging.getLogger("test"), {})


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[RealtimeSimulator]:
    async with RealtimeSimulator(api_key="sk-test", connect_delay_s=CONNECT_DELAY_S) as s:
        yield s


def used() -> float:
    return m.REGISTRY.get_sample_value("dialtone_bridge_warm_sockets_total", {"result": "used"}) or 0.0


def connection(sim: RealtimeSimulator, warm: WarmSockets | None) -> RealtimeConnection:
    return RealtimeConnection(sim.url, MODEL, "gpt-4o-transcribe", "sk-test", LOG, warm=warm)


SPEC = SessionSpec(Agent(name="desk", instructions="You are the front desk."), [], "marin")


async def test_a_call_takes_a_socket_opened_before_it_and_the_pool_refills(sim: RealtimeSimulator) -> None:
    pool = WarmSockets(sim.url, MODEL, "sk-test", size=2)
    await pool.start()
    try:
        await poll(lambda: pool.ready == 2, 10, what="two warm sockets")
        await asyncio.sleep(CONNECT_DELAY_S)  # they have been open longer than a set-up takes
        before, taken = len(sim.sessions), used()
        asked = time.monotonic()
        conn = connection(sim, pool)
        await conn.open(SPEC)
        opened = time.monotonic() - asked
        # The call's session is the first warm socket, opened before the call asked for one, and now
        # configured for the agent; no socket was opened for the call itself.
        first = sim.sessions[0]
        assert first.opened_at < asked and first.configured
        assert first.session["instructions"] == "You are the front desk."
        assert used() == taken + 1
        print(f"open() on a warm socket took {opened * 1000:.0f} ms (a new socket's set-up: {CONNECT_DELAY_S * 1000:.0f} ms)")
        await poll(lambda: len(sim.sessions) == before + 1 and pool.ready == 2, 10, what="the pool to refill")
        # Without a pool the same open makes a socket of its own.
        plain = connection(sim, None)
        await plain.open(SPEC)
        assert len(sim.sessions) == before + 2 and sim.sessions[-1].configured
        await plain.close()
        await conn.close()
        assert all(s.violations == [] for s in sim.sessions)
    finally:
        await pool.close()
    await poll(lambda: all(s.closed.is_set() for s in sim.sessions), 5, what="every socket closed")


async def test_sockets_too_old_or_closed_by_the_server_are_never_handed_out(sim: RealtimeSimulator) -> None:
    pool = WarmSockets(sim.url, MODEL, "sk-test", size=1, max_age_s=0.5)
    await pool.start()
    try:
        await poll(lambda: pool.ready == 1, 10, what="a warm socket")
        first = sim.sessions[0]
        await poll(lambda: first.closed.is_set(), 10, what="the socket to be replaced when too old")
        await poll(lambda: pool.ready == 1 and len(sim.sessions) >= 2, 10, what="its replacement")
        pool.max_age_s = 600.0
        replacement = sim.sessions[-1]
        await sim.drop(replacement)  # the server goes away under the waiting socket
        await poll(lambda: replacement.closed.is_set(), 5, what="the dropped socket to close")
        conn = connection(sim, pool)
        await conn.open(SPEC)  # not on the dead socket: on a new one (warm or its own)
        mine = [s for s in sim.sessions if s.configured and s.session.get("instructions") == "You are the front desk."]
        assert len(mine) == 1 and mine[0] is not replacement and not mine[0].closed.is_set()
        await conn.close()
    finally:
        await pool.close()
    await poll(lambda: all(s.closed.is_set() for s in sim.sessions), 5, what="every socket closed")
