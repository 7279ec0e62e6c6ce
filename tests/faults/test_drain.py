"""Rolling restarts: a realtime-bridge or media-gateway that gets SIGTERM drains.

It says 503 on /healthz at once, takes no new call, finishes the calls it has and exits. Each test
rolls both instances of one service (as a Kubernetes rolling update does: the new instance is up
before the old one is told to stop) during ten scripted calls; every call must end with exactly the
lines its caller said and heard. A last test shortens the bridge's grace: the calls it still holds
then are handed to another bridge and go on, with no apology and no line lost.
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from dialtone_bridge.agents import Agent
from dialtone_common.embedded import free_port
from dialtone_dev.platform import Platform, Service
from dialtone_sim.audio import decode
from dialtone_sim.balancer import Backend, Balancer
from dialtone_sim.polling import poll
from dialtone_sim.realtime import RealtimeSimulator
from dialtone_sim.recording import channels, fetch
from dialtone_sim.twilio_api import FakeTwilioApi
from dialtone_sim.twilio_edge import SimCall, dial

from .conftest import ACCOUNT_SID, AUTH_TOKEN, FAULT_LINE, SCENARIO, Figures, http_get
from .test_outages import Admin, Calls, end_calls, metric, no_caller_errors, transcripts_match

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

HALF = 5  # calls per instance: ten calls in all
# A gateway whose grace is short: it moves the calls it holds one second after SIGTERM.
HURRIED = {"DRAIN_GRACE_S": "4", "MOVE_BEFORE_S": "3"}


@pytest_asyncio.fixture(loop_scope="session")
async def extra(fault_platform: Platform) -> AsyncIterator[list[Service]]:
    """Instances a test starts beside the platform's own; afterwards they are gone and the
    platform's own instances run again, as the other fault tests expect."""
    started: list[Service] = []
    yield started
    await end_calls(_started)
    for call in _started_calls:
        await call.hangup()
    _started_calls.clear()
    for service in started:
        await service.stop(signal.SIGKILL)
        fault_platform.services.pop(service.instance, None)
    for name in ("media-gateway", "realtime-bridge"):
        if fault_platform.services[name].proc.returncode is not None:
            await fault_platform.start(name)
    await fault_platform.wait_healthy(timeout=60)


_started: list[Calls] = []
_started_calls: list[SimCall] = []


def calls(platform: Any, count: int = HALF) -> Calls:
    c = Calls(platform, pause_before=(1,), count=count).start()
    _started.append(c)
    return c


class Via:
    """The platform as the callers see it: its public URL, reached through ``url`` (a balancer)."""

    def __init__(self, platform: Platform, url: str) -> None:
        self.gateway_url, self.public_base_url = url, platform.public_base_url


async def start_bridge(platform: Platform, instance: str, extra: list[Service], **env: str) -> Service:
    service = await platform.start("realtime-bridge", instance=instance, env={"METRICS_PORT": str(free_port())} | env)
    extra.append(service)
    await platform.wait_healthy(timeout=30, services=[service])
    return service


async def start_gateway(platform: Platform, instance: str, extra: list[Service], **env: str) -> Service:
    port = free_port()
    service = await platform.start("media-gateway", instance=instance, env={"GATEWAY_PORT": str(port)} | env)
    service.health_url = f"http://127.0.0.1:{port}/healthz"
    extra.append(service)
    await platform.wait_healthy(timeout=30, services=[service])
    return service


def backend(service: Service) -> Backend:
    port = int(service.health_url.split(":")[2].split("/")[0])
    return Backend("127.0.0.1", port, service.health_url)


def metrics_url(service: Service) -> str:
    return service.health_url.replace("/healthz", "/metrics")


async def sigterm(service: Service, fig: dict[str, Any], label: str) -> float:
    """Send SIGTERM; /healthz must say 503 (draining) at once while the process stays up."""
    sent = time.monotonic()
    service.proc.send_signal(signal.SIGTERM)
    answer = None

    async def not_ready() -> bool:
        nonlocal answer
        answer = await http_get(service.health_url, timeout=2)
        return answer.status == 503

    await poll(not_ready, 5, interval=0.02, what=f"{service.instance} /healthz to say 503 after SIGTERM")
    fig[f"{label}: /healthz 503 after SIGTERM (s)"] = time.monotonic() - sent
    assert answer is not None and "draining" in str(answer.body), answer
    assert service.proc.returncode is None, f"{service.instance} exited at once instead of draining"
    return sent


async def exits_cleanly(service: Service, fig: dict[str, Any], label: str, calls_done_at: float,
                        since: str = "its last call") -> None:
    async with asyncio.timeout(30):
        code = await service.proc.wait()
    fig[f"{label}: exited after {since} (s)"] = max(0.0, time.monotonic() - calls_done_at)
    assert code == 0, f"{service.instance} exited with {code}:\n{service.log_tail()}"
    assert "drained" in service.log_tail(80), service.log_tail(80)


async def finish(group: Calls) -> float:
    group.go(1)
    await group.finish()
    return time.monotonic()


async def test_rolling_restart_of_the_bridges_drops_no_call(fault_platform: Platform, extra: list[Service],
                                                              figures: Figures):
    fig = figures.scenario("rolling restart: realtime-bridge")
    first = fault_platform.services["realtime-bridge"]
    started_total = "dialtone_bridge_calls_started_total"
    before = await metric(metrics_url(first), started_total)  # earlier tests' calls
    a = calls(fault_platform)  # all on the only bridge
    await a.at(1)
    second = await start_bridge(fault_platform, "realtime-bridge-2", extra)
    await sigterm(first, fig, "first bridge")
    assert await metric(metrics_url(first), started_total) == before + HALF
    b = calls(fault_platform)  # placed while the first drains: the second takes them all
    await b.at(1)
    assert await metric(metrics_url(second), started_total) == HALF
    done = await finish(a)  # the first bridge's calls finish on it, then it exits
    await exits_cleanly(first, fig, "first bridge", done)
    third = await start_bridge(fault_platform, "realtime-bridge-3", extra)
    await sigterm(second, fig, "second bridge")
    done = await finish(b)
    await exits_cleanly(second, fig, "second bridge", done)
    for group in (a, b):
        no_caller_errors(group)
        await transcripts_match(Admin(fault_platform), group, fig)
    fresh = calls(fault_platform, count=1)  # the bridge left standing serves new calls
    await finish(fresh)
    no_caller_errors(fresh)
    assert await metric(metrics_url(third), started_total) == 1


async def test_rolling_restart_of_the_gateways_moves_every_call(fault_platform: Platform, extra: list[Service],
                                                                  fault_twilio: FakeTwilioApi, figures: Figures):
    """Both gateways are rolled during ten calls that outlast their grace: each moves its calls to
    the gateway the balancer still sends streams to, through Twilio's REST API. Calls first on the
    first gateway move twice. No call drops, no caller hears an apology, and every transcript is whole."""
    fig = figures.scenario("rolling restart: media-gateway, calls moved")
    await fault_platform.services["media-gateway"].stop()  # the fixture starts it again afterwards
    first = await start_gateway(fault_platform, "media-gateway-a", extra, **HURRIED)
    async with Balancer([backend(first)]) as lb:
        via = Via(fault_platform, lb.url)
        await lb.wait_healthy(1)
        a = calls(via)  # all on the first gateway
        await a.at(1)  # every caller listening, between turns: the calls outlast the grace
        second = await start_gateway(fault_platform, "media-gateway-b", extra, **HURRIED)
        lb.add(backend(second))
        await lb.wait_healthy(2)
        sent = await sigterm(first, fig, "first gateway")
        await poll(lambda: len(lb.healthy) == 1, 5, interval=0.05, what="the balancer to leave the draining gateway")
        await exits_cleanly(first, fig, "first gateway", sent, since="SIGTERM")  # its calls moved: it is empty
        b = calls(via)  # the balancer sends them to the second gateway
        await b.at(1)
        await poll(lambda: all(len(c.call.moves) == 1 for c in a.callers if c.call), 10, interval=0.1,
                   what="the first gateway's calls to reach the second")
        third = await start_gateway(fault_platform, "media-gateway-c", extra, **HURRIED)
        lb.add(backend(third))
        await lb.wait_healthy(2)
        sent = await sigterm(second, fig, "second gateway")
        await exits_cleanly(second, fig, "second gateway", sent, since="SIGTERM")
        await poll(lambda: all(len(c.call.moves) == (2 if group is a else 1)
                               for group in (a, b) for c in group.callers if c.call),
                   10, interval=0.1, what="every call to reach the third gateway")
        await finish(a)
        await finish(b)
    for group in (a, b):
        no_caller_errors(group)  # the whole script heard and answered
        await transcripts_match(Admin(fault_platform), group, fig)
    gaps = sorted(move.gap_s for group in (a, b) for c in group.callers if c.call for move in c.call.moves)
    fig["moves"] = len(gaps)
    fig["caller's gap per move, p50 (s)"] = statistics.median(gaps)
    fig["caller's gap per move, max (s)"] = gaps[-1]
    assert len(gaps) == 3 * HALF and gaps[-1] < 1.0, gaps
    sids = {c.call.call_sid for group in (a, b) for c in group.callers if c.call}
    said = [u for sid in sids if (call := fault_twilio.calls.get(sid)) for u in call.updates if "<Say" in u.get("Twiml", "")]
    assert not said, f"apologies: {said}"
    gateways = {first.instance: "a", second.instance: "b", third.instance: "c"}
    for group, path in ((a, ["a -> b", "b -> c"]), (b, ["b -> c"])):
        for sid in group.sids:
            history = (await Admin(fault_platform).get(f"/sessions/{sid}")).body["status_history"]
            moved = [h["detail"] for h in history if h["status"] == "moved"]
            named = [" -> ".join(gateways.get(g, g) for g in d.split(" -> ")) for d in moved]
            assert named == path, f"{sid}: {history}"
            assert not {"move_failed", "bridge_lost", "recovered"} & {h["status"] for h in history}, history


async def test_a_move_twilio_refuses_falls_back_to_the_apology(fault_platform: Platform, extra: list[Service],
                                                               fault_twilio: FakeTwilioApi, figures: Figures):
    """Twilio's REST API fails the moves: the calls stay on the draining gateway until its grace
    ends, then hear the apology, as before moves existed; the session says why the move failed."""
    fig = figures.scenario("gateway drain: moves refused by Twilio")
    await fault_platform.services["media-gateway"].stop()
    gateway = await start_gateway(fault_platform, "media-gateway-refused", extra, **HURRIED)
    await start_gateway(fault_platform, "media-gateway-ready", extra)  # a gateway is ready: moves are tried
    async with Balancer([backend(gateway)]) as lb:
        await lb.wait_healthy(1)
        group = calls(Via(fault_platform, lb.url), count=2)
        await group.at(1)
        fault_twilio.failing_updates = 2  # the two moves; the apologies then go through
        try:
            sent = await sigterm(gateway, fig, "gateway")
            async with asyncio.timeout(30):
                assert await gateway.proc.wait() == 0, gateway.log_tail()
            fig["exited after SIGTERM (s)"] = time.monotonic() - sent
        finally:
            fault_twilio.failing_updates = 0
    for c in group.callers:
        assert c.call is not None
        await c.call.wait_closed(10)
        assert c.call.ended_by == "twilio" and not c.call.moves
        asked = [r.form.get("Twiml", [""])[0] for r in fault_twilio.requests if c.call.call_sid in r.path]
        assert len(asked) == 2 and "<Connect><Stream" in asked[0] and "<Say>" in asked[1], asked  # moved, refused
        assert [u["Twiml"] for u in fault_twilio.calls[c.call.call_sid].updates] == asked[1:]  # then the apology
        history = (await Admin(fault_platform).get(f"/sessions/{c.call.call_sid}")).body["status_history"]
        failed = [h for h in history if h["status"] == "move_failed"]
        assert len(failed) == 1 and "503" in failed[0]["detail"], history
        assert "moved" not in {h["status"] for h in history}


async def test_a_lone_gateway_keeps_its_calls_to_the_end_of_its_grace(fault_platform: Platform, extra: list[Service],
                                                                    fault_twilio: FakeTwilioApi, figures: Figures):
    """No other gateway is ready to take the calls (one gateway, as in compose on one machine): the
    draining gateway does not move them into the void; they go on until its grace ends, then hear
    the apology, and the session says why they did not move."""
    fig = figures.scenario("gateway drain: no other gateway")
    await fault_platform.services["media-gateway"].stop()
    gateway = await start_gateway(fault_platform, "media-gateway-alone", extra, **HURRIED)
    async with Balancer([backend(gateway)]) as lb:
        await lb.wait_healthy(1)
        group = calls(Via(fault_platform, lb.url), count=1)
        await group.at(1)
        sent = await sigterm(gateway, fig, "gateway")
        (c,) = group.callers
        assert c.call is not None
        await c.call.wait_closed(30)
        fig["the call ended after SIGTERM (s)"] = ended = time.monotonic() - sent
        async with asyncio.timeout(30):
            assert await gateway.proc.wait() == 0, gateway.log_tail()
    assert ended >= float(HURRIED["DRAIN_GRACE_S"]) and c.call.ended_by == "twilio" and not c.call.moves
    asked = [r.form.get("Twiml", [""])[0] for r in fault_twilio.requests if c.call.call_sid in r.path]
    assert len(asked) == 1 and "<Say>" in asked[0], asked  # no move was tried: only the apology
    history = (await Admin(fault_platform).get(f"/sessions/{c.call.call_sid}")).body["status_history"]
    assert [h["detail"] for h in history if h["status"] == "move_failed"] == ["no other gateway is ready"], history


async def test_a_call_whose_bridge_dies_during_its_move_goes_on(fault_platform: Platform, extra: list[Service],
                                                                  figures: Figures):
    """The bridge holding two calls is killed just as their gateway moves them: the new gateway's
    lease watch finds the bridge gone and offers the calls to another bridge, which carries them on."""
    fig = figures.scenario("gateway move while the bridge is killed")
    await fault_platform.services["media-gateway"].stop()
    first = await start_gateway(fault_platform, "media-gateway-m1", extra, **HURRIED)
    second = await start_gateway(fault_platform, "media-gateway-m2", extra)
    async with Balancer([backend(first)]) as lb:
        await lb.wait_healthy(1)
        group = calls(Via(fault_platform, lb.url), count=2)
        await group.at(1)
        other = await start_bridge(fault_platform, "realtime-bridge-m", extra)
        lb.add(backend(second))
        await lb.wait_healthy(2)
        await fault_platform.services["realtime-bridge"].stop(signal.SIGKILL)
        sent = await sigterm(first, fig, "gateway")
        await poll(lambda: all(c.call and c.call.moves for c in group.callers), 15, interval=0.1,
                   what="the calls to move")
        await poll(lambda: _recovered(other, 2), 15, interval=0.1, what="the other bridge to take the calls over")
        fig["calls moved and taken over after SIGTERM (s)"] = time.monotonic() - sent
        await finish(group)
    no_caller_errors(group)
    admin = Admin(fault_platform)
    for c in group.callers:
        assert c.call is not None
        session = (await poll(lambda: _ended(admin, c.call.call_sid), 30, what="the session to end"))  # noqa: B023
        statuses = [h["status"] for h in session["status_history"]]
        assert {"moved", "bridge_lost", "recovered"} <= set(statuses) and "move_failed" not in statuses, statuses
        # The script's lines, once each, besides the new bridge's "line dropped" words (the simulated
        # model says them with no scripted text). A caller who speaks over those words cuts them:
        # the line's full text says what they were, or, when the model stopped before more of
        # them was generated than the caller heard, the line is the first of those words.
        lines = [(line["role"], line["text"]) for line in session["transcript"]
                 if not (line["role"] == "agent" and line["text"]
                         and RESUMED.startswith(line.get("full_text") or line["text"]))]  # fmt: skip
        assert [line for line in lines if line != ("agent", "")] == c.heard, lines


RESUMED = Agent(name="any", instructions="").resumed  # the default a new bridge says after a takeover


async def _recovered(service: Service, count: int) -> bool:
    return await metric(metrics_url(service), "dialtone_bridge_calls_recovered_total") >= count


async def _ended(admin: Admin, sid: str) -> dict[str, Any] | None:
    answer = await admin.get(f"/sessions/{sid}")
    return answer.body if answer.status == 200 and answer.body.get("ended_at") else None


async def test_the_recording_of_a_call_moved_mid_sentence_is_whole(
    fault_platform: Platform, extra: list[Service], fault_realtime: RealtimeSimulator, figures: Figures
):
    """A gateway moves a call while the greeting is playing (most of it still queued at Twilio).
    The caller hears the greeting once, from where the old stream stopped (at most one 20 ms frame
    skipped, nothing twice); the recording holds the caller's audio continuous but for the gap,
    and, sample by sample, what the caller heard where they heard it."""
    fig = figures.scenario("gateway drain: a call moved mid-sentence")
    await fault_platform.services["media-gateway"].stop()
    first = await start_gateway(fault_platform, "media-gateway-rec-a", extra, DRAIN_GRACE_S="10", MOVE_BEFORE_S="10")
    second = await start_gateway(fault_platform, "media-gateway-rec-b", extra)
    async with Balancer([backend(first)]) as lb:
        await lb.wait_healthy(1)
        before = len(fault_realtime.sessions)
        call = await dial(lb.url, AUTH_TOKEN, public_base_url=fault_platform.public_base_url,
                          account_sid=ACCOUNT_SID, to=FAULT_LINE, one_way_delay_ms=30)
        _started_calls.append(call)
        lb.add(backend(second))
        await lb.wait_healthy(2)
        await call.wait_heard(300, timeout=20)  # the greeting plays; the rest of it waits at Twilio
        await sigterm(first, fig, "gateway")  # its grace is its move lead: the call moves at once
        await poll(lambda: bool(call.moves), 10, interval=0.05, what="the call to move")
        await call.wait_quiet(timeout=20, since=0)
        await call.say(SCENARIO.turns[0].caller)
        await call.wait_quiet(timeout=20)
        await call.hangup()
    move = call.moves[0]
    gap = move.resume_frame - move.stop_frame
    fig["caller's gap (s)"] = move.gap_s
    assert move.gap_s < 1.0

    # The greeting, heard once: up to the move as sent, then from where the old stream stopped.
    session = fault_realtime.sessions[before]
    greeting, heard = bytes(session.output_audio[session.output_order[0]]), bytes(call.heard)
    cut = move.heard_before
    assert 0 < cut < len(greeting) - 1600, "the move must come while most of the greeting is queued"
    assert heard[:cut] == greeting[:cut]
    skipped = greeting.find(heard[cut:cut + 800], cut - 800) - cut
    fig["greeting skipped at the move (ms)"] = skipped / 8
    assert 0 <= skipped <= 160, f"{skipped} bytes of the greeting {'skipped' if skipped > 0 else 'heard twice'}"
    rest = len(greeting) - cut - skipped
    assert heard[cut:cut + rest] == greeting[cut + skipped:], "the greeting's rest differs after the move"

    admin = Admin(fault_platform)

    async def stored() -> tuple[int, bytes, dict] | None:
        got = await fetch(admin.url, admin.token, f"/sessions/{call.call_sid}/recording")
        return got if got[0] == 200 else None

    _, wav, _ = await poll(stored, 30, what="the recording")
    left, right = channels(wav)

    # Caller: what was sent before the move where it was sent, silence for the gap, then the rest.
    sent = list(decode(bytes(call.sent_audio)))
    split = move.sent_before
    assert left[:split] == sent[:split], "the caller's audio before the move differs"
    placed = [g for g in range(max(0, gap - 3), gap + 4)
              if left[split + g * 160: split + g * 160 + len(sent) - split] == sent[split:]
              and not any(left[split: split + g * 160])]
    assert placed, "the caller's audio after the move is not where the gap puts it"
    fig["recording's gap (s)"] = placed[0] * 0.02
    assert placed[0] <= gap + 1, f"the recording's gap ({placed[0]} frames) is longer than the move ({gap})"

    # Agent: exactly what the caller heard, in the frame it was heard (shifted as the caller's audio
    # is after the move), and silence elsewhere: nothing doubled, nothing dropped.
    shift = placed[0] - gap
    expected = [0] * len(right)
    for frame, data in call.played:
        at = (frame + (shift if frame >= move.resume_frame else 0)) * 160
        assert at + len(data) <= len(right), "the recording ends before the caller stopped hearing"
        expected[at: at + len(data)] = decode(data)
    mismatched = [i for i, (a, b) in enumerate(zip(right, expected, strict=True)) if a != b]
    assert not mismatched, f"{len(mismatched)} agent samples differ, first at {mismatched[0] / 8000:.3f} s"
    status = (await admin.get(f"/sessions/{call.call_sid}")).body
    assert [h["status"] for h in status["status_history"]].count("moved") == 1


async def test_a_bridge_whose_grace_runs_out_hands_its_calls_on(fault_platform: Platform, extra: list[Service],
                                                                  figures: Figures):
    fig = figures.scenario("bridge drain past its grace: hand-off")
    await fault_platform.services["realtime-bridge"].stop()  # the fixture starts it again afterwards
    hurried = await start_bridge(fault_platform, "realtime-bridge-hurried", extra, DRAIN_GRACE_S="1")
    group = calls(fault_platform)
    await group.at(1)  # every caller is listening, between turns: the calls outlast the grace
    other = await start_bridge(fault_platform, "realtime-bridge-2", extra)
    sent = await sigterm(hurried, fig, "bridge")
    async with asyncio.timeout(20):
        code = await hurried.proc.wait()
    fig["bridge exited after SIGTERM (s)"] = time.monotonic() - sent
    assert code == 0, hurried.log_tail()
    await poll(lambda: _handed(other), 10, interval=0.1, what="the other bridge to take every call over")
    await finish(group)
    no_caller_errors(group)  # the whole script, and not a word of apology
    await transcripts_match(Admin(fault_platform), group, fig)
    for sid in group.sids:
        statuses = [s["status"] for s in (await Admin(fault_platform).get(f"/sessions/{sid}")).body["status_history"]]
        assert "handed_off" in statuses and "bridge_lost" not in statuses, f"{sid}: {statuses}"


async def _handed(service: Service) -> bool:
    return await metric(metrics_url(service), "dialtone_bridge_calls_recovered_total") >= HALF
