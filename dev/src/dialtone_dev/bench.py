"""``make bench``: N concurrent simulated calls through the whole platform.

Prints the platform's added latency per audio frame in each direction (p50/p99), the CPU seconds
each service spends per call-minute, and the frames lost. The simulators run in this process and
stamp every frame on the same monotonic clock:

* caller -> model: a 20 ms frame leaves the Twilio edge simulator at ``t0`` and is appended at the
  Realtime simulator at ``t1`` (matched by byte offset in the call's audio);
* model -> caller: an audio delta leaves the Realtime simulator at ``t0`` and arrives at the Twilio
  edge as one media message at ``t1`` (the bridge marks every delta, so deltas and media messages
  correspond one to one).

The simulators share the machine with the services, so these are figures under that load.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import statistics
import tempfile
import time
from pathlib import Path

import psutil
from dialtone_sim.realtime import RealtimeSimulator
from dialtone_sim.scenario import Scenario, Turn
from dialtone_sim.twilio_edge import SimCall, dial

from dialtone_dev.platform import Platform, Ports
from dialtone_dev.settings import DevSettings

LINES = [
    "Hi, I have a question about my order.",
    "Can you tell me when it will arrive?",
    "And what is the return policy?",
    "Thanks, that is all.",
]


def _scenario() -> Scenario:
    return Scenario(
        turns=[Turn(caller=line, agent="Sure, let me help you with that right away.") for line in LINES],
        fallback_agent="Is there anything else I can help you with today?",
    )


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


async def _caller(platform: Platform, index: int, duration: float) -> SimCall:
    await asyncio.sleep(index * 0.05)  # stagger so the calls do not all speak on the same tick
    call = await dial(platform.gateway_url, platform.twilio_auth_token, public_base_url=platform.public_base_url,
                      account_sid=platform.twilio_account_sid, from_=f"+1500555{index:04d}", to="+15005550006")
    deadline = time.monotonic() + duration
    try:
        await call.wait_quiet(since=0, timeout=30)
        turn = 0
        while time.monotonic() < deadline:
            await call.say(LINES[turn % len(LINES)])
            await call.wait_quiet(timeout=30)
            turn += 1
    finally:
        await call.hangup()
    return call


def _inbound_latencies(call: SimCall, session) -> tuple[list[float], int]:
    """Per frame: Twilio edge send -> Realtime append. Returns latencies (ms) and frames lost."""
    ends = [end for _, end in session.input_times]
    times = [t for t, _ in session.input_times]
    out = []
    frames = len(call.sent_times)
    received = len(session.input_audio) // 160
    for k, sent in enumerate(call.sent_times[:received]):
        i = bisect.bisect_right(ends, k * 160)
        if i < len(times):
            out.append((times[i] - sent) * 1000)
    return out, max(0, frames - received)


def _outbound_latencies(call: SimCall, session) -> tuple[list[float], int]:
    sent = session.output_times
    got = call.media_received
    n = min(len(sent), len(got))
    return [(got[k][0] - sent[k][0]) * 1000 for k in range(n)], max(0, len(sent) - len(got))


async def bench(calls: int, duration: float) -> None:
    settings = DevSettings()
    data_dir = Path(tempfile.mkdtemp(prefix="dialtone-bench-"))
    async with RealtimeSimulator(_scenario(), validate=False, speed=4.0) as sim:
        platform = Platform(data_dir=data_dir, ports=Ports.free(), nats_url=settings.nats_url,
                            database_url=settings.database_url, realtime_url=sim.url)
        async with platform:
            procs = {s.name: psutil.Process(s.pid) for s in platform.services.values()}
            cpu0 = {n: sum(p.cpu_times()[:2]) for n, p in procs.items()}
            me0 = sum(psutil.Process(os.getpid()).cpu_times()[:2])
            wall0 = time.monotonic()
            print(f"running {calls} concurrent calls for ~{duration:.0f} s each ...", flush=True)
            results = await asyncio.gather(*(_caller(platform, i, duration) for i in range(calls)),
                                           return_exceptions=True)
            wall = time.monotonic() - wall0
            await asyncio.sleep(1.0)
            cpu = {n: sum(p.cpu_times()[:2]) - cpu0[n] for n, p in procs.items()}
            me = sum(psutil.Process(os.getpid()).cpu_times()[:2]) - me0

    ok = [r for r in results if isinstance(r, SimCall)]
    failed = [r for r in results if not isinstance(r, SimCall)]
    inbound: list[float] = []
    outbound: list[float] = []
    lost_in = lost_out = 0
    unmatched = list(sim.sessions)
    for call in ok:
        session = next((s for s in unmatched if bytes(s.input_audio[:len(call.sent_audio)]) == bytes(call.sent_audio)
                        or bytes(call.sent_audio).startswith(bytes(s.input_audio))), None)
        if session is None:
            lost_in += len(call.sent_times)
            continue
        unmatched.remove(session)
        lat, lost = _inbound_latencies(call, session)
        inbound += lat
        lost_in += lost
        lat, lost = _outbound_latencies(call, session)
        outbound += lat
        lost_out += lost
    call_minutes = sum(len(c.sent_times) * 0.02 for c in ok) / 60
    print()
    print(f"Dialtone bench: {len(ok)} calls completed, {len(failed)} failed, {call_minutes:.1f} call-minutes, "
          f"{wall:.1f} s wall, {os.cpu_count()} cores")
    for error in failed[:3]:
        print(f"  failure: {error!r}")
    print("Added latency per audio frame (ms):")
    print(f"  caller -> model : p50 {_pct(inbound, 50):6.2f}   p99 {_pct(inbound, 99):6.2f}   ({len(inbound)} frames)")
    print(f"  model -> caller : p50 {_pct(outbound, 50):6.2f}   p99 {_pct(outbound, 99):6.2f}   ({len(outbound)} chunks)")
    print(f"Frames lost: caller -> model {lost_in}, model -> caller {lost_out}")
    print("CPU seconds per call-minute:")
    for name, seconds in sorted(cpu.items()):
        print(f"  {name:<18} {seconds / max(call_minutes, 1e-9):7.3f}   ({seconds:.1f} s)")
    total = sum(cpu.values())
    print(f"  {'platform total':<18} {total / max(call_minutes, 1e-9):7.3f}   ({total:.1f} s)")
    print(f"  {'(simulators)':<18} {me / max(call_minutes, 1e-9):7.3f}   ({me:.1f} s, not part of the platform)")
    if inbound:
        print(f"  mean caller->model {statistics.mean(inbound):.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(prog="dialtone bench")
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds each call lasts (about)")
    args = parser.parse_args()
    asyncio.run(bench(args.calls, args.duration))
