"""Acceptance: every message a service publishes during a call matches the bus contract (proto/)."""

from __future__ import annotations

import nats
import pytest
from dialtone_dev.platform import Platform
from dialtone_proto.contract import ContractError, check_message
from dialtone_sim.realtime import RealtimeSimulator

from .conftest import Admin
from .test_call import LINES, SCENARIO, converse

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]


async def test_every_bus_message_of_a_call_matches_the_contract(
    platform: Platform, realtime: RealtimeSimulator, admin: Admin
):
    realtime.scenario = SCENARIO
    seen: dict[str, int] = {}
    violations: list[str] = []

    async def check(msg) -> None:
        try:
            kind = check_message(msg.subject, msg.data, dict(msg.headers or {}))
            seen[kind] = seen.get(kind, 0) + 1
        except ContractError as exc:
            violations.append(str(exc)[:300])

    nc = await nats.connect(platform.nats_url, **platform.nats_connect_options())  # dev-harness: hears all
    try:
        await nc.subscribe(">", cb=check, pending_msgs_limit=200_000)
        call = await converse(platform, LINES)
        await admin.session(call.call_sid)
        await nc.flush()
    finally:
        await nc.drain()

    assert violations == []
    # The call used every part of the contract: the claim, audio and marks both ways, the tools, events.
    for kind in ("call.offer", "reply:call.answer", "frame:in:AUDIO", "frame:in:MARK", "frame:in:STOP",
                 "frame:out:AUDIO", "frame:out:MARK", "frame:rec", "tools.call", "reply:tools.result",
                 "event:call.started", "event:transcript.line", "event:tool.called", "event:usage.reported",
                 "event:outcome.set", "event:call.ended"):
        assert seen.get(kind), f"no {kind} seen on the bus: {sorted(seen)}"
