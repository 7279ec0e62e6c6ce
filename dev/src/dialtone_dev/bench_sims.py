"""The bench's model simulator: the Realtime or the GPT-Live simulator in a process of its own,
with validation on (every client event checked against the OpenAI SDK's types, as in the tests),
a 1.5 s connect delay (a real socket plus ``session.update``/``session.start``), and, at the end,
the compact record of each session the figures need (the full sessions hold every event and would
be hundreds of MB at 300 calls).
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing.sharedctypes
import multiprocessing.synchronize
import os
import pickle
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop

from dialtone_dev.bench_figures import inbound_frames
from dialtone_dev.bench_load import LINES

REPLY = "Sure, let me help you with that right away."
FALLBACK = "Is there anything else I can help you with today?"
CONNECT_DELAY_S = 1.5


@dataclass
class SessionRecord:
    """One model session, reduced: the call it served (from the tags in its audio), the frames it
    received and when, the agent audio it sent and when, and whether it was still open."""

    index: int
    call: int | None
    frames: list[tuple[int, float]]
    output: list[tuple[float, int]]
    still_open: bool


@dataclass
class SimReport:
    sessions: list[SessionRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _simulator(engine: str, port: int) -> Any:
    from dialtone_sim.live import LiveSimulator
    from dialtone_sim.realtime import RealtimeSimulator
    from dialtone_sim.scenario import Scenario, Turn

    scenario = Scenario(turns=[Turn(caller=line, agent=REPLY) for line in LINES], fallback_agent=FALLBACK)
    if engine == "live":
        return LiveSimulator(scenario, port=port, validate=True, start_delay_s=CONNECT_DELAY_S)
    return RealtimeSimulator(scenario, port=port, validate=True, speed=4.0, connect_delay_s=CONNECT_DELAY_S)


def run_process(engine: str, port: int, out: str, ready: multiprocessing.synchronize.Event,
                open_now: multiprocessing.sharedctypes.Synchronized, cpus: list[int] | None) -> None:  # fmt: skip
    """Serve until SIGTERM, keeping ``open_now`` at the count of open sessions; then pickle a
    :class:`SimReport` to ``out``."""
    from dialtone_sim import speech

    if cpus:
        os.sched_setaffinity(0, cpus)
    speech.one_voice(True)  # each line rendered once, whatever the seed
    speech.real_speech(False)  # espeak-ng per reply would cost more CPU than the platform itself

    async def serve() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        sim = _simulator(engine, port)
        async with sim:
            ready.set()
            while not stop.is_set():
                open_now.value = sum(1 for s in sim.sessions if not s.closed.is_set())
                # The simulator keeps every event of every session (tests inspect them): without
                # this, the full collections that walk them stall the loop for 100s of ms, and the
                # figures would measure the simulator's garbage collector.
                gc.freeze()
                await asyncio.sleep(0.2)
            report = SimReport(errors=list(sim.sim_errors()))
            for s in sim.sessions:
                call, frames = inbound_frames(s.input_audio, s.input_times)
                report.sessions.append(SessionRecord(s.index, call, frames, list(s.output_times), not s.closed.is_set()))
        Path(out).write_bytes(pickle.dumps(report))

    uvloop.run(serve())  # the load is the bench's, not the platform's: as cheap as it can be
