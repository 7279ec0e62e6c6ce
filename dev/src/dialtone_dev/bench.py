"""``make bench``: N concurrent simulated calls through the whole platform; ``make soak``: many
short calls one after another, watching each service's memory.

Prints the platform's added latency per audio frame in each direction (p50/p99), the CPU seconds
each service spends per call-minute, and the frames lost.

The simulators run in processes of their own (the Realtime simulator in one, the simulated callers
in ``--workers`` more), so their own event loops do not inflate the figures, and they stamp every
frame with ``time.monotonic()``, which on Linux is one clock for every process of the machine:

* caller -> model: a 20 ms frame leaves the Twilio edge simulator at ``t0`` and is appended at the
  Realtime simulator at ``t1`` (matched by byte offset in the call's audio);
* model -> caller: an audio delta leaves the Realtime simulator at ``t0`` and arrives at the Twilio
  edge as one media message at ``t1`` (the bridge marks every delta, so deltas and media messages
  correspond one to one).

Everything shares the machine's cores with the services: these are figures under that load.

The soak (``bench --soak N``) places N short calls in sequence (greeting, one caller line, a tool
call, the reply, hang-up; then the stored session is read back through the admin API) and reports
each service's resident memory (RSS) at the start, after a warm-up and at the end. Growth after the
warm-up is what a leak looks like: per call state that is never freed. The goal is under 10 MB per
service over 1,000 calls.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import multiprocessing
import multiprocessing.synchronize
import os
import pickle
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil
from dialtone_common.embedded import free_port

from dialtone_dev.platform import Platform, Ports
from dialtone_dev.settings import DevSettings

LINES = [
    "Hi, I have a question about my order.",
    "Can you tell me when it will arrive?",
    "And what is the return policy?",
    "Thanks, that is all.",
]


@dataclass
class CallRecord:
    sent_audio: bytes
    sent_times: list[float]
    media_received: list[tuple[float, int]]
    hung_up_at: float


@dataclass
class SessionRecord:
    input_audio: bytes
    input_times: list[tuple[float, int]]
    output_times: list[tuple[float, int]]


# ---- the simulator processes ---------------------------------------------------------------
def _realtime_process(port: int, out: str, ready: multiprocessing.synchronize.Event) -> None:
    from dialtone_sim import speech
    from dialtone_sim.realtime import RealtimeSimulator
    from dialtone_sim.scenario import Scenario, Turn

    speech.real_speech(False)  # espeak-ng per reply would cost more CPU than the platform itself

    scenario = Scenario(
        turns=[Turn(caller=line, agent="Sure, let me help you with that right away.") for line in LINES],
        fallback_agent="Is there anything else I can help you with today?",
    )

    async def serve() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with RealtimeSimulator(scenario, port=port, validate=False, speed=4.0) as sim:
            ready.set()
            await stop.wait()
            records = [SessionRecord(bytes(s.input_audio), s.input_times, s.output_times) for s in sim.sessions]
        Path(out).write_bytes(pickle.dumps(records))

    asyncio.run(serve())


def _caller_process(first: int, count: int, duration: float, target: dict, out: str) -> None:
    from dialtone_sim import speech
    from dialtone_sim.twilio_edge import dial

    speech.real_speech(False)

    async def one(index: int) -> CallRecord:
        await asyncio.sleep((index - first) * 0.05)  # stagger so the calls do not all speak on one tick
        call = await dial(target["gateway_url"], target["token"], public_base_url=target["public_base_url"],
                          account_sid=target["account_sid"], from_=f"+1500555{index:04d}", to="+15005550006")
        deadline = time.monotonic() + duration
        try:
            await call.wait_quiet(since=0, timeout=30)
            turn = 0
            while time.monotonic() < deadline:
                await call.say(LINES[turn % len(LINES)])
                await call.wait_quiet(timeout=30)
                turn += 1
        finally:
            hung_up_at = time.monotonic()
            await call.hangup()
        return CallRecord(bytes(call.sent_audio), call.sent_times, call.media_received, hung_up_at)

    async def run() -> list:
        return await asyncio.gather(*(one(i) for i in range(first, first + count)), return_exceptions=True)

    results = asyncio.run(run())
    Path(out).write_bytes(pickle.dumps([r if isinstance(r, CallRecord) else repr(r) for r in results]))


# ---- figures ---------------------------------------------------------------------------------
def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def _inbound(call: CallRecord, session: SessionRecord) -> tuple[list[float], int]:
    """Per frame: Twilio edge send -> Realtime append. Returns latencies (ms) and frames lost."""
    ends = [end for _, end in session.input_times]
    times = [t for t, _ in session.input_times]
    received = len(session.input_audio) // 160
    out = []
    for k, sent in enumerate(call.sent_times[:received]):
        i = bisect.bisect_right(ends, k * 160)
        if i < len(times):
            out.append((times[i] - sent) * 1000)
    return out, max(0, len(call.sent_times) - received)


def _outbound(call: CallRecord, session: SessionRecord) -> tuple[list[float], int]:
    """Per delta: Realtime send -> Twilio edge arrival. A delta sent in the last second before the
    caller hung up may still be on its way: it is not counted as lost."""
    sent, got = session.output_times, call.media_received
    n = min(len(sent), len(got))
    due = sum(1 for t, _ in sent if t < call.hung_up_at - 1.0)
    return [(got[k][0] - sent[k][0]) * 1000 for k in range(n)], max(0, due - len(got))


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


async def bench(calls: int, duration: float, workers: int) -> None:
    settings = DevSettings()
    tmp = Path(tempfile.mkdtemp(prefix="dialtone-bench-"))
    ctx = multiprocessing.get_context("spawn")
    sim_port = free_port()
    ready = ctx.Event()
    sim = ctx.Process(target=_realtime_process, args=(sim_port, str(tmp / "sessions.pkl"), ready))
    sim.start()
    await asyncio.to_thread(ready.wait, 30)
    platform = Platform(data_dir=tmp / "platform", ports=Ports.free(), nats_url=settings.nats_url,
                        database_url=settings.database_url, realtime_url=f"ws://127.0.0.1:{sim_port}/v1/realtime")
    try:
        async with platform:
            procs = {s.name: psutil.Process(s.pid) for s in platform.services.values()}
            cpu0 = {n: _cpu(p) for n, p in procs.items()}
            target = {"gateway_url": platform.gateway_url, "token": platform.twilio_auth_token,
                      "public_base_url": platform.public_base_url, "account_sid": platform.twilio_account_sid}
            print(f"running {calls} concurrent calls for ~{duration:.0f} s each "
                  f"({workers} caller processes, 1 Realtime simulator process, synthetic speech) ...", flush=True)
            wall0 = time.monotonic()
            share = [calls // workers + (1 if i < calls % workers else 0) for i in range(workers)]
            callers = []
            for i, count in enumerate(share):
                p = ctx.Process(target=_caller_process,
                                args=(sum(share[:i]), count, duration, target, str(tmp / f"calls-{i}.pkl")))
                p.start()
                callers.append(p)
            sim_cpu0 = _cpu(psutil.Process(sim.pid))
            caller_procs = [psutil.Process(p.pid) for p in callers]
            caller_cpu = dict.fromkeys(range(len(callers)), 0.0)
            while any(p.is_alive() for p in callers):  # sample: a finished process's CPU is gone
                for i, proc in enumerate(caller_procs):
                    with contextlib.suppress(psutil.Error):
                        caller_cpu[i] = _cpu(proc)
                await asyncio.sleep(0.5)
            for p in callers:
                await asyncio.to_thread(p.join)
            wall = time.monotonic() - wall0
            await asyncio.sleep(1.0)
            cpu = {n: _cpu(p) - cpu0[n] for n, p in procs.items()}
            sim_cpu = _cpu(psutil.Process(sim.pid)) - sim_cpu0
    finally:
        if sim.is_alive() and sim.pid is not None:
            os.kill(sim.pid, signal.SIGTERM)
        await asyncio.to_thread(sim.join, 30)

    results = [r for i in range(workers) for r in pickle.loads((tmp / f"calls-{i}.pkl").read_bytes())]
    sessions: list[SessionRecord] = pickle.loads((tmp / "sessions.pkl").read_bytes())
    ok = [r for r in results if isinstance(r, CallRecord)]
    failed = [r for r in results if not isinstance(r, CallRecord)]
    inbound: list[float] = []
    outbound: list[float] = []
    lost_in = lost_out = 0
    by_audio: dict[bytes, list[SessionRecord]] = {}
    for s in sessions:
        by_audio.setdefault(s.input_audio, []).append(s)
    for call in ok:
        # Identical audio means identical calls: any one-to-one pairing measures the same thing.
        candidates = by_audio.get(call.sent_audio) or []
        if not candidates:
            lost_in += len(call.sent_times)
            continue
        session = candidates.pop()
        latencies, lost = _inbound(call, session)
        inbound += latencies
        lost_in += lost
        latencies, lost = _outbound(call, session)
        outbound += latencies
        lost_out += lost
    call_minutes = sum(len(c.sent_times) * 0.02 for c in ok) / 60
    print()
    print(f"Dialtone bench: {len(ok)} calls completed, {len(failed)} failed, {call_minutes:.1f} call-minutes, "
          f"{wall:.1f} s wall, {os.cpu_count()} cores")
    for error in failed[:3]:
        print(f"  failure: {error}")
    print("Added latency per audio frame (ms), simulator to simulator through all services:")
    print(f"  caller -> model : p50 {_pct(inbound, 50):6.2f}   p99 {_pct(inbound, 99):6.2f}   ({len(inbound)} frames)")
    print(f"  model -> caller : p50 {_pct(outbound, 50):6.2f}   p99 {_pct(outbound, 99):6.2f}   ({len(outbound)} chunks)")
    print(f"Frames lost: caller -> model {lost_in}, model -> caller {lost_out}")
    print("CPU seconds per call-minute:")
    for name, seconds in sorted(cpu.items()):
        print(f"  {name:<18} {seconds / max(call_minutes, 1e-9):7.3f}   ({seconds:.1f} s)")
    total = sum(cpu.values())
    print(f"  {'platform total':<18} {total / max(call_minutes, 1e-9):7.3f}   ({total:.1f} s)")
    print(f"  {'(Realtime sim)':<18} {sim_cpu / max(call_minutes, 1e-9):7.3f}   ({sim_cpu:.1f} s, not the platform)")
    callers_cpu = sum(caller_cpu.values())
    print(f"  {'(callers)':<18} {callers_cpu / max(call_minutes, 1e-9):7.3f}   ({callers_cpu:.1f} s, not the platform)")
    busy = (total + sim_cpu + callers_cpu) / (wall * (os.cpu_count() or 1))
    print(f"Machine busy: {busy:.0%} of {os.cpu_count()} cores during the run"
          + ("  (saturated: latency includes queueing behind the simulators)" if busy > 0.8 else ""))


# ---- the soak ----------------------------------------------------------------------------------
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


def main() -> None:
    parser = argparse.ArgumentParser(prog="dialtone bench")
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds each call lasts (about)")
    parser.add_argument("--workers", type=int, default=2, help="processes running the simulated callers")
    parser.add_argument("--soak", type=int, metavar="N", help="instead: N short calls in sequence, RSS per service")
    parser.add_argument("--warmup", type=int, default=50, help="soak: calls before the baseline RSS")
    args = parser.parse_args()
    if args.soak is not None:
        raise SystemExit(asyncio.run(soak(max(1, args.soak), max(0, args.warmup))))
    asyncio.run(bench(args.calls, args.duration, max(1, args.workers)))
