"""Any number of instances: two of every service at once share the calls, and nothing is done twice.

Ten simulated calls at once reach two media-gateways through one public URL (a round-robin load
balancer), and are served by two realtime-bridges, two tool-runners, two transcript-writers and
two admin APIs. What a user would notice is asserted: every call goes to its end with its whole
transcript and its tool calls in the admin API, and both admin APIs say the same; every pair of
instances did part of the work; no event, line or tool call was stored twice; and each tool call
the model made ran exactly once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import pytest
from dialtone_dev.platform import Platform, Service
from dialtone_sim.balancer import Balancer
from dialtone_sim.polling import poll
from dialtone_sim.twilio_edge import SimCall, dial

from .conftest import ACCOUNT_SID, AUTH_TOKEN, CALLS, GREETING, LINE, SCENARIO, TOOLS_PER_CALL

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

QUIET_MS = 700
FULL_CALL = [("agent", GREETING)] + [
    (role, text) for t in SCENARIO.turns for role, text in (("caller", t.caller), ("agent", t.agent))
]
TOOL_NAMES = [tool.name for turn in SCENARIO.turns for tool in turn.tools]


@dataclass
class Caller:
    index: int
    call: SimCall | None = None
    heard: list[tuple[str, str]] = field(default_factory=list)


async def converse(lb: Balancer, c: Caller) -> None:
    """One caller: dial the public URL, hear the greeting, say each line and hear each answer."""
    await asyncio.sleep(c.index * 0.15)  # not all on one 20 ms tick
    c.call = await dial(lb.url, AUTH_TOKEN, public_base_url=lb.url, account_sid=ACCOUNT_SID,
                        from_=f"+1500555{8000 + c.index:04d}", to=LINE)  # fmt: skip
    try:
        await c.call.wait_quiet(QUIET_MS, since=0, timeout=40)
        c.heard.append(("agent", GREETING))
        for turn in SCENARIO.turns:
            await c.call.say(turn.caller)
            await c.call.wait_quiet(QUIET_MS, timeout=40)
            c.heard += [("caller", turn.caller), ("agent", turn.agent)]
    finally:
        await c.call.hangup()


async def get_json(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, Any]:
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, (await r.json() if r.content_type == "application/json" else await r.text())


async def metric(http: aiohttp.ClientSession, service: Service, name: str, **labels: str) -> float:
    """Sum of one Prometheus metric's samples (matching ``labels``) on one instance's /metrics."""
    async with http.get(service.base_url + "/metrics") as r:
        assert r.status == 200, f"{service.instance} /metrics: {r.status}"
        text = await r.text()
    total = 0.0
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if line.startswith("#") or head.split("{", 1)[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


async def per_instance(http: aiohttp.ClientSession, platform: Platform, service: str, name: str,
                       **labels: str) -> dict[str, float]:  # fmt: skip
    return {s.instance: await metric(http, s, name, **labels) for s in platform.instances(service)}


async def test_two_of_every_service_share_the_calls_and_do_nothing_twice(
    scale_platform: Platform, balancer: Balancer, figures: dict[str, Any]
) -> None:
    p = scale_platform
    admins = p.instances("admin-api")
    assert len(admins) == 2 and all(len(p.instances(name)) == 2 for name in
                                    ("media-gateway", "realtime-bridge", "tool-runner", "transcript-writer"))  # fmt: skip
    started = time.monotonic()
    callers = [Caller(i) for i in range(CALLS)]
    results = await asyncio.gather(*(converse(balancer, c) for c in callers), return_exceptions=True)
    figures["calls placed at once"] = CALLS
    figures["all calls done after (s)"] = time.monotonic() - started
    failed = {c.index: repr(r) for c, r in zip(callers, results, strict=True) if isinstance(r, BaseException)}
    assert not failed, f"calls broke off: {failed}"
    assert all(c.heard == FULL_CALL for c in callers)
    sids = [c.call.call_sid for c in callers]

    async with aiohttp.ClientSession() as http:
        # ---- every call complete in the admin API, and both admin APIs say the same ----------
        first, second = (a.base_url for a in admins)

        async def all_stored() -> bool:
            for sid in sids:
                status, body = await get_json(http, f"{first}/sessions/{sid}", p.admin_token)
                if status != 200 or not body.get("ended_at") or len(body["tool_calls"]) < TOOLS_PER_CALL:
                    return False
                if len(body["transcript"]) < len(FULL_CALL):
                    return False
                if "recording_complete" not in body["metrics"]:  # the recording is stored after the call
                    return False
            return True

        await poll(all_stored, 30, interval=0.3, what="every session to end with its transcript and tool calls")
        figures["sessions complete after the calls (s)"] = time.monotonic() - started - figures["all calls done after (s)"]
        for sid in sids:
            status_1, one = await get_json(http, f"{first}/sessions/{sid}", p.admin_token)
            status_2, two = await get_json(http, f"{second}/sessions/{sid}", p.admin_token)
            assert status_1 == status_2 == 200
            assert one == two, f"{sid}: the two admin APIs differ"
            assert [(line["role"], line["text"]) for line in one["transcript"]] == FULL_CALL, sid
            assert [t["name"] for t in one["tool_calls"]] == TOOL_NAMES, sid
            assert all(t["ok"] for t in one["tool_calls"]), one["tool_calls"]
        lists = [(await get_json(http, f"{url}/sessions?limit=50", p.admin_token)) for url in (first, second)]
        assert lists[0] == lists[1]
        assert {s["call_sid"] for s in lists[0][1]["items"]} == set(sids)

        # ---- every pair of instances did part of the work -------------------------------------
        gateways = p.instances("media-gateway")
        by_gateway = {g.instance: balancer.connections[("127.0.0.1", g.port)] for g in gateways}
        streams = await per_instance(http, p, "media-gateway", "dialtone_gateway_streams_total")
        bridges = await per_instance(http, p, "realtime-bridge", "dialtone_bridge_calls_started_total")
        runners = await per_instance(http, p, "tool-runner", "dialtone_tool_calls_total", result="ok")
        writers = await per_instance(http, p, "transcript-writer", "dialtone_writer_events_written_total")
        skipped = await per_instance(http, p, "transcript-writer", "dialtone_writer_duplicates_skipped_total")
        admin_requests = await per_instance(http, p, "admin-api", "dialtone_admin_requests_total",
                                            route="/sessions/{call_sid}")  # fmt: skip
    figures["balancer connections per gateway"] = by_gateway
    figures["media streams per gateway"] = streams
    figures["calls per bridge"] = bridges
    figures["tool calls per tool-runner"] = runners
    figures["events written per writer"] = writers
    figures["duplicate events skipped per writer"] = skipped
    figures["session reads per admin API"] = admin_requests
    # Each call is two connections (webhook, media stream), each its own balancing decision.
    assert all(n > 0 for n in by_gateway.values()), by_gateway
    assert sum(by_gateway.values()) == 2 * CALLS, by_gateway
    assert all(n > 0 for n in streams.values()) and sum(streams.values()) == CALLS, streams
    assert all(n > 0 for n in bridges.values()) and sum(bridges.values()) == CALLS, bridges
    assert all(n > 0 for n in runners.values()) and sum(runners.values()) == CALLS * TOOLS_PER_CALL, runners
    assert all(n > 0 for n in writers.values()), writers

    # ---- nothing stored twice, each tool run once (PostgreSQL itself) ----------------------------
    conn = await asyncpg.connect(p.database_url)
    try:
        # The writers applied every stored event once between them: none written by both. Late
        # events (a recording's metric, Twilio's last status) may still be landing: the count and
        # the writers' counters are read together until they agree (a doubled write never would).
        async def applied_once() -> tuple[dict, int] | None:
            async with aiohttp.ClientSession() as http:
                applied = await per_instance(http, p, "transcript-writer", "dialtone_writer_events_written_total")
            stored = await conn.fetchval("SELECT count(*) FROM call_events")
            return (applied, stored) if sum(applied.values()) == stored else None

        try:
            writers, events = await poll(applied_once, 10, interval=0.3, what="the writers' counts to match the table")
        except AssertionError:
            events = await conn.fetchval("SELECT count(*) FROM call_events")
            raise AssertionError(f"writers applied {writers}, call_events holds {events}") from None
        doubled_events = await conn.fetch("SELECT event_id FROM call_events GROUP BY event_id HAVING count(*) > 1")
        assert not doubled_events
        lifecycle = await conn.fetch(
            "SELECT call_sid, type, count(*) AS n, array_agg(payload->>'bridge_id') AS bridges FROM call_events"
            " WHERE type IN ('call.started', 'call.ended') GROUP BY call_sid, type"
        )
        assert sorted((r["call_sid"], r["type"], r["n"]) for r in lifecycle) == sorted(
            (sid, kind, 1) for sid in sids for kind in ("call.started", "call.ended")
        ), "every call must be started and ended exactly once"
        started_by = {r["call_sid"]: r["bridges"][0] for r in lifecycle if r["type"] == "call.started"}
        assert set(started_by.values()) == set(bridges), f"calls started by {started_by}"
        lines = await conn.fetch("SELECT call_sid, seq, role, text FROM transcript_lines")
        assert len(lines) == CALLS * len(FULL_CALL), f"{len(lines)} transcript lines stored"
        assert len({(r["call_sid"], r["seq"]) for r in lines}) == len(lines), "two lines share a place"
        assert len({(r["call_sid"], r["role"], r["text"]) for r in lines}) == len(lines), "a line stored twice"
        tool_rows = await conn.fetch("SELECT call_sid, tool_call_id FROM tool_calls")
        runs = await conn.fetch("SELECT call_id, tool_call_id, runner FROM scale_tool_runs")
    finally:
        await conn.close()
    recorded = {(r["call_sid"], r["tool_call_id"]) for r in tool_rows}
    ran = [(r["call_id"], r["tool_call_id"]) for r in runs]
    assert len(tool_rows) == len(recorded) == CALLS * TOOLS_PER_CALL
    assert len(ran) == len(set(ran)), "a tool call ran more than once"
    assert set(ran) == recorded, "the tool calls that ran are not the ones the sessions record"
    runs_per_runner = {name: sum(1 for r in runs if r["runner"] == name) for name in sorted({r["runner"] for r in runs})}
    figures["tool runs per tool-runner (database)"] = runs_per_runner
    assert set(runs_per_runner) == {s.instance for s in p.instances("tool-runner")}, runs_per_runner
    figures["test took (s)"] = time.monotonic() - started
