"""``make soak`` (``bench --soak N``): many short calls one after another, watching each
service's memory.

N short calls in sequence (greeting, one caller line, a tool call, the reply, hang-up; then the
stored session is read back through the admin API); each service's resident memory (RSS) at the
start, after a warm-up and at the end. Growth after the warm-up is what a leak looks like: per call
state that is never freed. The goal is under 10 MB per service over 1,000 calls.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.synchronize
import os
import signal
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil
from dialtone_common.embedded import free_port

from dialtone_dev.platform import Platform, Ports
from dialtone_dev.settings import DevSettings

SOAK_AGENT = """
default = true
numbers = ["+15005550006"]
tools = ["set_outcome"]
greeting = "Hello, soak line."
[limits]
idle_prompt_s = 0
max_duration_s = 0
"""
SOAK_LINE = "Checking in."
SOAK_REPLY = "Noted, thanks."
SOAK_GOAL_MB = 10.0


def _soak_realtime_process(port: int, ready: multiprocessing.synchronize.Event) -> None:
    from dialtone_sim import speech
    from dialtone_sim.realtime import RealtimeSimulator
    from dialtone_sim.scenario import Scenario, ToolCall, Turn

    speech.real_speech(False)
    scenario = Scenario(turns=[Turn(caller=SOAK_LINE, agent=SOAK_REPLY,
                                    tools=[ToolCall("set_outcome", {"outcome": "answered"})])])

    async def serve() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with RealtimeSimulator(scenario, port=port, validate=False, speed=4.0):
            ready.set()
            await stop.wait()

    asyncio.run(serve())


def _rss_mb(procs: dict[str, psutil.Process]) -> dict[str, float]:
    return {name: proc.memory_info().rss / 2**20 for name, proc in procs.items()}


async def _soak_call(platform: Platform, http: aiohttp.ClientSession, index: int) -> str | None:
    """One short call, checked through the admin API. Returns what went wrong, or None."""
    from dialtone_sim.twilio_edge import dial

    call = await dial(platform.gateway_url, platform.twilio_auth_token, public_base_url=platform.public_base_url,
                      account_sid=platform.twilio_account_sid, from_=f"+1500555{index % 10000:04d}",
                      to="+15005550006")
    try:
        await call.wait_quiet(500, since=0, timeout=30)
        await call.say(SOAK_LINE)
        await call.wait_quiet(500, timeout=30)
    finally:
        await call.hangup()
    deadline = time.monotonic() + 30
    session: dict = {}
    while time.monotonic() < deadline:
        async with http.get(f"{platform.admin_url}/sessions/{call.call_sid}") as r:
            if r.status == 200:
                session = await r.json()
                if session.get("ended_at") and len(session["transcript"]) >= 3:
                    break
        await asyncio.sleep(0.1)
    said = [(line["role"], line["text"]) for line in session.get("transcript", [])]
    if said != [("agent", "Hello, soak line."), ("caller", SOAK_LINE), ("agent", SOAK_REPLY)]:
        return f"{call.call_sid}: transcript {said}"
    if session.get("outcome") != "answered":
        return f"{call.call_sid}: outcome {session.get('outcome')!r}"
    return None


async def soak(calls: int, warmup: int) -> int:
    """``calls`` sequential short calls; prints RSS per service. Returns 1 if a service grew past the
    goal after the warm-up (or calls failed), else 0."""
    from dialtone_sim import speech
    from dialtone_sim.twilio_api import FakeTwilioApi

    speech.real_speech(False)
    settings = DevSettings()
    tmp = Path(tempfile.mkdtemp(prefix="dialtone-soak-"))
    agents = tmp / "agents" / "soak"
    agents.mkdir(parents=True)
    (agents / "agent.toml").write_text(SOAK_AGENT)
    (agents / "system.md").write_text("You are the soak-test agent of Acme.")
    ctx = multiprocessing.get_context("spawn")
    sim_port = free_port()
    ready = ctx.Event()
    sim = ctx.Process(target=_soak_realtime_process, args=(sim_port, ready))
    sim.start()
    await asyncio.to_thread(ready.wait, 30)
    account_sid, auth_token = "AC" + "5" * 32, "soak-" + os.urandom(12).hex()
    warmup = min(warmup, calls)
    failures: list[str] = []
    marks: dict[str, dict[str, float]] = {}
    try:
        async with FakeTwilioApi(account_sid, auth_token) as twilio:
            platform = Platform(
                data_dir=tmp / "platform", ports=Ports.free(), nats_url=settings.nats_url,
                database_url=settings.database_url, realtime_url=f"ws://127.0.0.1:{sim_port}/v1/realtime",
                twilio_auth_token=auth_token, twilio_account_sid=account_sid, twilio_api_base_url=twilio.base_url,
                agents_dir=agents.parent,
            )
            async with platform, aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {platform.admin_token}"}
            ) as http:
                procs = {s.name: psutil.Process(s.pid) for s in platform.services.values()}
                names = sorted(procs)
                marks["start"] = _rss_mb(procs)
                print(f"soak: {calls} sequential calls, RSS measured after {warmup} (warm-up) and at the end; "
                      f"logs in {platform.data_dir / 'logs'}", flush=True)
                print(f"{'calls':>7}  {'s':>6}  " + "  ".join(f"{n:>17}" for n in names) + "   (RSS MB)", flush=True)
                started = time.monotonic()
                report_every = max(10, calls // 20)
                for i in range(1, calls + 1):
                    try:
                        problem = await _soak_call(platform, http, i)
                    except Exception as exc:  # one failed call must not end the soak
                        problem = f"call {i}: {type(exc).__name__}: {exc}"
                    if problem:
                        failures.append(problem)
                    if i == warmup:
                        marks["warm"] = _rss_mb(procs)
                    if i % report_every == 0 or i == calls:
                        rss = _rss_mb(procs)
                        print(f"{i:>7}  {time.monotonic() - started:>6.0f}  "
                              + "  ".join(f"{rss[n]:>17.1f}" for n in names), flush=True)
                wall = time.monotonic() - started
                marks["end"] = _rss_mb(procs)
    finally:
        if sim.is_alive() and sim.pid is not None:
            os.kill(sim.pid, signal.SIGTERM)
        await asyncio.to_thread(sim.join, 30)

    marks.setdefault("warm", marks["start"])
    print()
    print(f"Dialtone soak: {calls} sequential calls in {wall:.0f} s ({wall / max(calls, 1):.2f} s per call), "
          f"{calls - len(failures)} complete, {len(failures)} failed")
    for problem in failures[:5]:
        print(f"  failure: {problem}")
    print(f"RSS (MB)             start  after {warmup:<4}     end   growth after warm-up   since start")
    over = []
    for n in names:
        growth = marks["end"][n] - marks["warm"][n]
        verdict = "ok" if growth < SOAK_GOAL_MB else f"OVER {SOAK_GOAL_MB:.0f} MB"
        if growth >= SOAK_GOAL_MB:
            over.append(n)
        print(f"  {n:<17} {marks['start'][n]:>7.1f}  {marks['warm'][n]:>10.1f}  {marks['end'][n]:>6.1f}"
              f"   {growth:>+8.1f}  {verdict:<11}   {marks['end'][n] - marks['start'][n]:>+7.1f}")
    print(f"Goal: under {SOAK_GOAL_MB:.0f} MB growth per service after the warm-up: "
          + ("met" if not over else f"NOT met by {', '.join(over)}"))
    return 1 if over or failures else 0


