"""``make bench``: N concurrent simulated calls through the whole platform, then through a
single-process reference bridge, side by side; ``make soak`` (``--soak N``): :mod:`.bench_soak`.

The platform (every service, NATS, PostgreSQL) runs on one core and the load (the load generator
of :mod:`.bench_load` and the model simulator of :mod:`.bench_sims`, validation on, 1.5 s connect
delay) on the other (:class:`~.bench_run.Pinning`). The same load then runs against the reference
bridge of :mod:`.bench_reference`, pinned the same way. Printed (README, "Performance"):

* added latency per 20 ms audio frame, each direction, p50/p99, matched by position in the audio
  (:mod:`.bench_figures`); frames lost; calls failed; simulator protocol errors;
* CPU seconds per call-minute per service, NATS and PostgreSQL, in total, and the reference's;
* RSS per service idle and at load, memory per call, the platform's idle total;
* first words: voice webhook -> first agent audio at the caller (stream 0.5 s after the webhook);
  model sockets still open after the calls, early ones whose stream never came included;
* turn latency by stage, from the load generator and simulator, and from the admin API's turns;
* each target of issue 14 as met or not.

It exits 1 when the work failed: a call failed, a frame was lost, a simulator (the load generator
included) saw a protocol error, or a model socket stayed open. Slow figures alone do not fail it
(they depend on the machine): they are printed against their targets.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dialtone_dev.bench_figures import (
    FRAME_S,
    Target,
    Verdict,
    fmt_ms,
    inbound_latency,
    outbound_latency,
    pct,
    per_call_minute,
)  # fmt: skip
from dialtone_dev.bench_run import Pinning, RunResult, run_side

FIRST_WORDS_GOAL_MS = 1800.0
WARM_POOL_GOAL_MS = 300.0  # the goal once the bridge keeps warm Realtime sockets
PLATFORM_SHARE_GOAL_MS = 10.0
CPU_GOAL = 0.40  # CPU seconds per call-minute
LATE_WARN_MS = 20.0  # the load generator's clock later than this (p99): its own lag is in the figures
OTHERS_WARN = 0.25  # other programs used more than this share of a core: a shared machine


@dataclass
class Figures:
    """What one side's run comes to."""

    kind: str
    calls: int
    failed: list[str]
    call_minutes: float
    inbound: list[float] = field(default_factory=list)
    outbound: list[float] = field(default_factory=list)
    lost_in: int = 0
    lost_out: int = 0
    unmatched_calls: int = 0
    protocol_errors: list[str] = field(default_factory=list)
    first_words: list[float] = field(default_factory=list)  # webhook -> first agent audio, ms
    after_stream: list[float] = field(default_factory=list)  # stream start -> first agent audio, ms
    stages: dict[str, list[float]] = field(default_factory=dict)  # bench-measured turn stages, ms
    admin_stages: dict[str, list[float]] = field(default_factory=dict)  # from GET /sessions/{sid} turns
    admin_received: bool = False


def figures(run: RunResult) -> Figures:
    ok = [c for c in run.calls if c.error is None]
    f = Figures(run.kind, len(run.calls), [f"{c.call_sid}: {c.error}" for c in run.calls if c.error],
                sum(len(c.sent_times) for c in ok) * FRAME_S / 60)  # fmt: skip
    by_call: dict[int, list] = {}
    for s in run.sim.sessions:
        if s.call is not None:
            by_call.setdefault(s.call, []).append(s)
    for stage in ("stopped -> model sent", "model sent -> arrived", "arrived -> heard"):
        f.stages[stage] = []
    for c in run.calls:
        f.protocol_errors += c.protocol_errors
        if c.first_audio_at is not None:
            f.first_words.append((c.first_audio_at - c.webhook_at) * 1000)
            if c.stream_at is not None:
                f.after_stream.append((c.first_audio_at - c.stream_at) * 1000)
        if c.error:
            continue
        sessions = by_call.get(c.index, [])
        if not sessions:
            f.unmatched_calls += 1
            f.lost_in += len(c.sent_times)
            continue
        frames = [fr for s in sessions for fr in s.frames]
        output = sorted(piece for s in sessions for piece in s.output)
        # Frames sent before the greeting arrived waited for the model's session to open.
        lat, lost = inbound_latency(c.sent_times, frames, c.hung_up_at, since=c.first_audio_at or 0.0)
        f.inbound += lat
        f.lost_in += lost
        lat, lost = outbound_latency(output, c.received, c.hung_up_at)
        f.outbound += lat
        f.lost_out += lost
        for stop, (arrived, heard) in zip(c.stops, c.replies, strict=False):
            sent = next((t for t, _ in output if t > stop), None)
            if sent is not None and arrived is not None and arrived >= sent:
                f.stages["stopped -> model sent"].append((sent - stop) * 1000)
                f.stages["model sent -> arrived"].append((arrived - sent) * 1000)
            if arrived is not None and heard is not None:
                f.stages["arrived -> heard"].append((heard - arrived) * 1000)
    for name in ("received_ms", "sent_ms", "heard_ms", "received -> sent"):
        f.admin_stages[name] = []
    for body in run.sessions_json.values():
        for turn in body.get("turns") or []:
            received, sent, heard = turn.get("received_ms"), turn.get("sent_ms"), turn.get("heard_ms")
            for name, value in (("received_ms", received), ("sent_ms", sent), ("heard_ms", heard)):
                if isinstance(value, int | float):
                    f.admin_stages[name].append(float(value))
            if isinstance(received, int | float) and isinstance(sent, int | float):
                f.admin_received = True
                f.admin_stages["received -> sent"].append(float(sent) - float(received))
    return f


def verdict(run: RunResult, f: Figures) -> Verdict:
    return Verdict(calls=f.calls, failed_calls=f.failed, lost_in=f.lost_in, lost_out=f.lost_out,
                   sim_errors=[*run.sim.errors, *f.protocol_errors], leaked_sockets=run.sockets_open_after)  # fmt: skip


# ---- the report -------------------------------------------------------------------------------
def _p(values: list[float], label: str, width: int = 40, p_hi: float = 99) -> str:
    return (f"  {label:<{width}} p50 {fmt_ms(pct(values, 50))}   p{p_hi:g} {fmt_ms(pct(values, p_hi))}"
            f"   ({len(values)})")  # fmt: skip


def report(engine: str, calls: int, pin: Pinning, runs: list[RunResult], out: Callable[[str], None] = print,
           env: dict[str, str] | None = None) -> int:  # fmt: skip
    """Print every figure; returns the exit code."""
    env = env or {}
    figs = {r.kind: figures(r) for r in runs}
    plat_run = next((r for r in runs if r.kind == "platform"), None)
    ref_run = next((r for r in runs if r.kind == "reference"), None)
    out("")
    out(f"Dialtone bench: {calls} concurrent calls, engine {engine}, {len(os.sched_getaffinity(0))} of {os.cpu_count()} cores"
        + (f"; platform settings {' '.join(f'{k}={v}' for k, v in env.items())}" if env else ""))
    out(f"Pinning: {pin.describe()}")
    for r in runs:
        if r.pinned_ok:
            out(f"  {r.kind} processes' CPU affinity: {r.pinned_ok}")
    code = 0
    for r in runs:
        f = figs[r.kind]
        v = verdict(r, f)
        code |= v.exit_code
        out("")
        out(f"== {r.kind}: {f.calls - len(f.failed)} of {f.calls} calls completed, {f.call_minutes:.1f} call-minutes, "
            f"{r.wall_s:.0f} s wall")  # fmt: skip
        for problem in f.failed[:3]:
            out(f"  failed: {problem}")
        out("Added latency per 20 ms audio frame (ms), simulator to simulator (from the greeting on):")
        out(_p(f.inbound, "caller -> model"))
        out(_p(f.outbound, "model -> caller"))
        out(f"Frames lost: caller -> model {f.lost_in}, model -> caller {f.lost_out}"
            + (f" ({f.unmatched_calls} calls reached no model session)" if f.unmatched_calls else ""))  # fmt: skip
        errors = [*r.sim.errors, *f.protocol_errors]
        out(f"Simulator protocol errors: {len(errors)}")
        for e in errors[:5]:
            out(f"  {e}")
        _cpu_table(r, f, out)
        _memory_table(r, calls, out)
        if r.kind == "platform":
            _first_words_and_turns(r, f, out)
        for problem in v.problems():
            out(f"FAILED: {problem}")
    if plat_run and ref_run:
        p, q = figs["platform"], figs["reference"]
        p_cpu = per_call_minute(sum(u.cpu_s for u in plat_run.usage.values()), p.call_minutes)
        q_cpu = per_call_minute(sum(u.cpu_s for u in ref_run.usage.values()), q.call_minutes)
        out("")
        out("== platform vs single-process reference bridge")
        out(f"  {'':<34}{'platform':>10}{'reference':>11}{'ratio':>8}")
        for label, a, b in (("CPU s per call-minute", p_cpu, q_cpu),
                            ("caller -> model p99 (ms)", pct(p.inbound, 99), pct(q.inbound, 99)),
                            ("model -> caller p99 (ms)", pct(p.outbound, 99), pct(q.outbound, 99))):  # fmt: skip
            ratio = a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan
            out(f"  {label:<34}{a:>10.3f}{b:>11.3f}{ratio:>7.2f}x")
    if plat_run:
        out("")
        out("Targets (issue 14; informative: figures depend on the machine, only failures set the exit code):")
        for t in targets(calls, plat_run, figs["platform"], ref_run, figs.get("reference"), engine, env):
            out(t.line())
    out("")
    out("bench: FAILED (exit 1)" if code else "bench: the work succeeded (exit 0)")
    return code


def targets(calls: int, run: RunResult, f: Figures, ref: RunResult | None, rf: Figures | None,
            engine: str = "realtime", env: dict[str, str] | None = None) -> list[Target]:  # fmt: skip
    cpu = per_call_minute(sum(u.cpu_s for u in run.usage.values()), f.call_minutes)
    frame_goal = 20.0 if calls >= 300 else 5.0
    warm = int((env or {}).get("REALTIME_WARM_SOCKETS", "0") or 0)
    out = [
        Target("first words p95, webhook -> first agent audio", pct(f.first_words, 95), FIRST_WORDS_GOAL_MS),
        Target("with a warm pool: stream start -> first audio p95", pct(f.after_stream, 95), WARM_POOL_GOAL_MS,
               why_not="the pool is Realtime's" if engine != "realtime" else "" if warm else
               f"no pool; run with --env REALTIME_WARM_SOCKETS={min(calls, 50)}"),  # fmt: skip
        Target("platform's share of a turn (received -> sent) p95", pct(f.admin_stages["received -> sent"], 95),
               PLATFORM_SHARE_GOAL_MS),  # fmt: skip
        Target("platform CPU per call-minute", cpu, CPU_GOAL, "s"),
        Target(f"caller -> model p99 at {calls} calls", pct(f.inbound, 99), frame_goal),
        Target(f"model -> caller p99 at {calls} calls", pct(f.outbound, 99), frame_goal),
        Target("frames lost", float(f.lost_in + f.lost_out), 0, "frm"),
        Target("model sockets open after the calls", float(run.sockets_open_after), 0, "sock"),
    ]
    if ref is not None and rf is not None:
        ref_cpu = per_call_minute(sum(u.cpu_s for u in ref.usage.values()), rf.call_minutes)
        out.insert(3, Target("platform CPU / reference CPU per call", cpu / ref_cpu if ref_cpu else math.nan, 1.0, "x"))
    return out


def _cpu_table(r: RunResult, f: Figures, out: Callable[[str], None]) -> None:
    out("CPU seconds per call-minute (the platform's core):")
    total = 0.0
    for group, u in sorted(r.usage.items()):
        total += u.cpu_s
        note = {"transcript-writer": "  (includes the recorder)",
                "media-gateway": "  (includes the recorder's tap)"}.get(group, "")
        out(f"  {group:<22}{per_call_minute(u.cpu_s, f.call_minutes):>8.3f}   ({u.cpu_s:.1f} s){note}")
    out(f"  {r.kind + ' total':<22}{per_call_minute(total, f.call_minutes):>8.3f}   ({total:.1f} s); "
        f"its core {total / max(r.wall_s, 1e-9):.0%} busy")  # fmt: skip
    load = sum(r.load_cpu_s.values())
    for name, seconds in r.load_cpu_s.items():
        out(f"  ({name}){'':<{max(0, 20 - len(name))}}{per_call_minute(seconds, f.call_minutes):>8.3f}   ({seconds:.1f} s, not the platform)")
    out(f"  load (simulator and load generator) {load / max(r.wall_s, 1e-9):.0%} of a core; the load generator's "
        f"20 ms clock ran late by p50 {fmt_ms(pct(r.late_ms, 50), 0)} p99 {fmt_ms(pct(r.late_ms, 99), 0)} ms")  # fmt: skip
    if r.core_busy:
        out("  each core busy during the calls, everyone's processes counted (a shared machine's others too): "
            + ", ".join(f"CPU {c} {b:.0%}" for c, b in sorted(r.core_busy.items())))  # fmt: skip
    for warning in _load_warnings(r, total):
        out(f"  WARNING: {warning}")


def _load_warnings(r: RunResult, measured_cpu_s: float) -> list[str]:
    """Why this run's latencies may not be the platform's: the load could not keep time, or other
    programs took the cores."""
    out = []
    late = pct(r.late_ms, 99)
    if not math.isnan(late) and late > LATE_WARN_MS:
        out.append(f"the load generator's clock ran {late:.0f} ms late (p99): the latencies include its own lag")
    if r.core_busy and r.wall_s > 0:
        ours = (measured_cpu_s + sum(r.load_cpu_s.values())) / r.wall_s
        others = sum(r.core_busy.values()) - ours
        if others > OTHERS_WARN:
            out.append(f"other programs used {others:.0%} of a core during the calls (a shared machine): "
                       "the figures are indicative")  # fmt: skip
    return out


def _memory_table(r: RunResult, calls: int, out: Callable[[str], None]) -> None:
    out("Memory (MB; RSS, PostgreSQL as PSS):         idle    at load   per call")
    for group, u in sorted(r.usage.items()):
        out(f"  {group:<38}{u.idle_mb:>9.1f}  {u.load_mb:>9.1f}  {(u.load_mb - u.idle_mb) / max(calls, 1):>8.2f}")
    idle = sum(u.idle_mb for u in r.usage.values())
    load = sum(u.load_mb for u in r.usage.values())
    out(f"  {r.kind + ' total':<38}{idle:>9.1f}  {load:>9.1f}  {(load - idle) / max(calls, 1):>8.2f}")


def _first_words_and_turns(r: RunResult, f: Figures, out: Callable[[str], None]) -> None:
    out("First words (model connect delay 1.5 s, stream 0.5 s after the webhook), ms:")
    out(_p(f.first_words, "webhook -> first agent audio", p_hi=95))
    out(_p(f.after_stream, "stream start -> first agent audio", p_hi=95))
    out(f"Model sockets open after the calls: {r.sockets_open_after} (sessions opened {len(r.sim.sessions)}, "
        f"{len(r.orphans)} webhooks whose stream never came)")  # fmt: skip
    out("Turn latency by stage, ms (bench: caller's clock and the simulator's):")
    labels = {"stopped -> model sent": "caller stopped -> model's first audio sent",
              "model sent -> arrived": "-> first audio arrived at the caller",
              "arrived -> heard": "-> first audio heard (played out)"}  # fmt: skip
    for key, label in labels.items():
        out(_p(f.stages[key], label, width=44, p_hi=95))
    out("  (the first stage is mostly the simulated model: its VAD's 500 ms of silence, then the reply)")
    out("Turn latency by stage, ms (admin API, GET /sessions/{sid} turns, from the bridge's speech_stopped):")
    if not f.admin_received:
        out(f"  {'-> model audio received (received_ms)':<44} p50     n/a   p95     n/a   (not in this platform's turns)")
    else:
        out(_p(f.admin_stages["received_ms"], "-> model audio received (received_ms)", width=44, p_hi=95))
    out(_p(f.admin_stages["sent_ms"], "-> first audio sent to Twilio (sent_ms)", width=44, p_hi=95))
    out(_p(f.admin_stages["heard_ms"], "-> first audio heard, mark echoed (heard_ms)", width=44, p_hi=95))
    if f.admin_received:
        out(_p(f.admin_stages["received -> sent"], "platform's share: received -> sent", width=44, p_hi=95))


async def bench(engine: str, calls: int, duration: float, workers: int, pin_enabled: bool, reference: bool,
                profile: Path | None = None, env: dict[str, str] | None = None) -> int:  # fmt: skip
    pin = Pinning.choose(pin_enabled)
    print(f"Pinning: {pin.describe()}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="dialtone-bench-"))
    own = os.sched_getaffinity(0)
    runs = []
    try:
        runs.append(await run_side("platform", engine, calls, duration, workers, pin, tmp / "platform",
                                   say=lambda s: print(s, flush=True), profile=profile, env=env))  # fmt: skip
        if reference:
            runs.append(await run_side("reference", engine, calls, duration, workers, pin, tmp / "reference",
                                       say=lambda s: print(s, flush=True), profile=profile))  # fmt: skip
    finally:
        os.sched_setaffinity(0, own)
    code = report(engine, calls, pin, runs, env=env)
    if profile:
        print(f"Flame graphs (py-spy, during the calls): {profile}/*.svg")
    return code


def main() -> None:
    parser = argparse.ArgumentParser(prog="dialtone bench")
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds each call lasts (about)")
    parser.add_argument("--engine", choices=["realtime", "live"], default="realtime")
    parser.add_argument("--workers", type=int, default=0, help="load generator processes (0: one per 150 calls)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the platform and the load apart")
    parser.add_argument("--no-reference", action="store_true", help="skip the single-process reference bridge")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy flame graphs of the services (or the reference), the simulator and the load generator in DIR")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for every platform service, e.g. RECORDINGS_ENABLED=false to see what the "
                        "recorder costs (repeatable)")
    parser.add_argument("--soak", type=int, metavar="N", help="instead: N short calls in sequence, RSS per service")
    parser.add_argument("--warmup", type=int, default=50, help="soak: calls before the baseline RSS")
    args = parser.parse_args()
    if args.soak is not None:
        from dialtone_dev.bench_soak import soak

        raise SystemExit(asyncio.run(soak(max(1, args.soak), max(0, args.warmup))))
    workers = args.workers or max(1, math.ceil(args.calls / 150))
    env = {}
    for item in args.env:
        name, eq, value = item.partition("=")
        if not eq or not name:
            parser.error(f"--env wants NAME=VALUE, not {item!r}")
        env[name] = value
    raise SystemExit(asyncio.run(bench(args.engine, max(1, args.calls), args.duration, workers,
                                       not args.no_pin, not args.no_reference, args.profile, env)))  # fmt: skip
