"""One side of ``make bench``: the platform (or the single-process reference bridge) under load,
pinned apart from the load, with what each process spent.

Pinning: the bench process pins itself to the platform's core while it starts the platform, so
NATS, PostgreSQL (and every backend it forks) and the five services inherit that core; it then
moves itself to the load core, where it starts the model simulator and the load generators. With
fewer than two cores there is nothing to pin apart: everything shares the core, and the report
says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import pickle
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from dialtone_common.embedded import free_port

from dialtone_dev import bench_load, bench_reference, bench_sims
from dialtone_dev.bench_load import CallResult, Target
from dialtone_dev.bench_sims import SimReport
from dialtone_dev.platform import Platform, Ports
from dialtone_dev.settings import DevSettings

GREETING = bench_reference.GREETING
AGENT = """
default = true
engine = "{engine}"
numbers = ["+15005550006"]
tools = []
greeting = "{greeting}"
[limits]
idle_prompt_s = 0
max_duration_s = 0
"""
RAMP_S = 5.0
PREPARE_TTL_S = 10.0  # the bridge's default: an early session whose stream never came closes after this


@dataclass
class Pinning:
    platform: list[int] | None  # None: not pinned
    load: list[int] | None

    @classmethod
    def choose(cls, enabled: bool = True) -> Pinning:
        cores = sorted(os.sched_getaffinity(0))
        if not enabled or len(cores) < 2:
            return cls(None, None)
        return cls([cores[0]], cores[1:])  # 2 cores: one each; more: the load gets the rest

    def describe(self) -> str:
        if self.platform is None:
            cores = len(os.sched_getaffinity(0))
            why = "1 core" if cores < 2 else "--no-pin"
            return (f"NOT pinned ({why}): platform and load generator share {cores} core(s); latency includes "
                    "queueing behind the load generator and the simulators, not comparable with the targets")  # fmt: skip
        return (f"platform (services, NATS, PostgreSQL) on CPU {self.platform}; "
                f"load generator and model simulator on CPU {self.load}")


@dataclass
class Usage:
    """CPU seconds and memory (MB) of one group of processes (a service, NATS, PostgreSQL...)."""

    cpu_s: float = 0.0
    idle_mb: float = 0.0
    load_mb: float = 0.0  # the largest seen during the calls


@dataclass
class RunResult:
    kind: str  # platform | reference
    calls: list[CallResult]
    orphans: list[str]
    sim: SimReport
    usage: dict[str, Usage]
    load_cpu_s: dict[str, float]  # the simulator, the callers: not the platform
    wall_s: float
    sockets_open_after: int
    sessions_json: dict[str, dict] = field(default_factory=dict)  # platform only: GET /sessions/{sid}
    pinned_ok: str = ""
    late_ms: list[float] = field(default_factory=list)  # the load generator's clock ticks, how late
    core_busy: dict[int, float] = field(default_factory=dict)  # each core's busy share during the calls


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _group(proc: psutil.Process, services: dict[int, str]) -> str:
    """The group a platform process counts in: its service (or a child of one), NATS, PostgreSQL."""
    with contextlib.suppress(psutil.Error):
        for p in [proc, *proc.parents()]:
            if p.pid in services:
                return services[p.pid]
        name = proc.name()
        if "nats" in name:
            return "nats-server"
        if "postgres" in name or "postmaster" in name:
            return "postgresql"
        return name
    return "?"


class Processes:
    """Every process of the side being measured, found afresh at each sample (PostgreSQL forks a
    backend per connection), with CPU counted from the first sample on."""

    def __init__(self, roots: list[int], services: dict[int, str], exclude: set[int]) -> None:
        self.roots, self.services, self.exclude = roots, services, exclude
        self.base: dict[int, float] = {}
        self.last: dict[int, tuple[str, float]] = {}

    def procs(self) -> list[psutil.Process]:
        """The measured processes: the services (and their children), NATS, PostgreSQL; not the
        bench itself, the simulator, the load generators or multiprocessing's helpers."""
        wanted = {*self.services.values(), "nats-server", "postgresql"}
        found: dict[int, psutil.Process] = {}
        for pid in self.roots:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                for p in [root, *root.children(recursive=True)]:
                    if p.pid not in self.exclude and _group(p, self.services) in wanted:
                        found[p.pid] = p
        return list(found.values())

    def start_cpu(self) -> None:
        for p in self.procs():
            with contextlib.suppress(psutil.Error):
                self.base[p.pid] = _cpu(p)

    def sample_cpu(self) -> None:
        for p in self.procs():
            with contextlib.suppress(psutil.Error):
                self.last[p.pid] = (_group(p, self.services), _cpu(p) - self.base.get(p.pid, 0.0))

    def cpu_by_group(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for group, seconds in self.last.values():
            out[group] = out.get(group, 0.0) + seconds
        return out

    def memory_mb(self) -> dict[str, float]:
        """Per group: RSS, except PostgreSQL's processes, summed as PSS (their shared buffers once)."""
        out: dict[str, float] = {}
        for p in self.procs():
            with contextlib.suppress(psutil.Error):
                group = _group(p, self.services)
                mem = p.memory_full_info().pss if group == "postgresql" else p.memory_info().rss
                out[group] = out.get(group, 0.0) + mem / 2**20
        return out

    def pin(self, cpus: list[int]) -> None:
        """Pin every process found now; what PostgreSQL forks later inherits it. (The bench's own
        pinning reaches only what its main thread starts: NATS and PostgreSQL are started from
        worker threads, whose affinity is their own.)"""
        for p in self.procs():
            with contextlib.suppress(psutil.Error):
                p.cpu_affinity(cpus)

    def affinity(self) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for p in self.procs():
            with contextlib.suppress(psutil.Error):
                out.setdefault(_group(p, self.services), set()).update(p.cpu_affinity())
        return out


async def _fetch_sessions(platform: Platform, sids: list[str], timeout: float = 30.0) -> dict[str, dict]:
    """GET /sessions/{sid} for each call once it has ended (its turns are stored by then)."""
    out: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    sem = asyncio.Semaphore(8)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {platform.admin_token}"}) as http:

        async def one(sid: str) -> None:
            async with sem:
                while time.monotonic() < deadline:
                    async with http.get(f"{platform.admin_url}/sessions/{sid}") as r:
                        if r.status == 200:
                            body = await r.json()
                            out[sid] = body
                            if body.get("ended_at"):
                                return
                    await asyncio.sleep(0.5)

        await asyncio.gather(*(one(s) for s in sids))
    return out


async def run_side(kind: str, engine: str, calls: int, duration: float, workers: int, pin: Pinning, tmp: Path,
                   say: Any = print, profile: Path | None = None, env: dict[str, str] | None = None) -> RunResult:  # fmt: skip
    """Run ``calls`` calls against the platform (``kind="platform"``) or the reference bridge;
    with ``profile``, py-spy samples each service during the calls into a flame graph there."""
    tmp.mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("spawn")
    me = os.getpid()
    if pin.load:
        os.sched_setaffinity(0, pin.load)
    sim_port, ready, open_now = free_port(), ctx.Event(), ctx.Value("i", 0)
    sim = ctx.Process(target=bench_sims.run_process,
                      args=(engine, sim_port, str(tmp / "sim.pkl"), ready, open_now, pin.load))  # fmt: skip
    sim.start()
    if not await asyncio.to_thread(ready.wait, 60):
        raise RuntimeError("the model simulator did not start")
    model_url = (f"ws://127.0.0.1:{sim_port}/v1/live/sessions" if engine == "live"
                 else f"ws://127.0.0.1:{sim_port}/v1/realtime")  # fmt: skip
    platform: Platform | None = None
    reference: multiprocessing.process.BaseProcess | None = None
    stack = contextlib.AsyncExitStack()
    try:
        if kind == "platform":
            settings = DevSettings()
            agents = tmp / "agents" / "bench"
            agents.mkdir(parents=True, exist_ok=True)
            (agents / "agent.toml").write_text(AGENT.format(engine=engine, greeting=GREETING))
            (agents / "system.md").write_text("You are the bench's phone agent. Answer briefly.")
            platform = await _start_platform(stack, pin, data_dir=tmp / "platform", nats_url=settings.nats_url,
                                             database_url=settings.database_url, agents_dir=agents.parent,
                                             realtime_url=f"ws://127.0.0.1:{sim_port}/v1/realtime",
                                             live_url=f"ws://127.0.0.1:{sim_port}/v1/live/sessions",
                                             extra_env=dict(env or {}))  # fmt: skip
            services = {s.pid: s.name for s in platform.services.values()}
            target = Target(platform.gateway_url, platform.public_base_url or platform.gateway_url,
                            platform.twilio_auth_token, platform.twilio_account_sid)  # fmt: skip
        else:
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            target = Target(base, base, "reference-" + os.urandom(8).hex(), "AC" + os.urandom(16).hex())
            reference = ctx.Process(target=bench_reference.run_process,
                                    args=(engine, model_url, port, base, target.auth_token, pin.platform))  # fmt: skip
            reference.start()
            await _wait_port(port)
            services = {reference.pid or 0: "reference bridge"}
        roots = [me] if reference is None else [reference.pid or 0]
        measured = Processes(roots, services, exclude={me, sim.pid or 0})
        if pin.platform:
            measured.pin(pin.platform)
        await asyncio.sleep(2.0)  # settle: idle figures after start-up
        idle = measured.memory_mb()
        pinned = measured.affinity()
        measured.start_cpu()
        sim_proc = psutil.Process(sim.pid)
        sim_cpu0 = _cpu(sim_proc)
        share = [calls // workers + (1 if i < calls % workers else 0) for i in range(workers)]
        orphans = max(2, calls // 10) if kind == "platform" else 0
        say(f"{kind}: {calls} calls of ~{duration:.0f} s ({engine}), {workers} load generator process(es), "
            f"{orphans} webhooks whose stream never comes ...")  # fmt: skip
        callers = []
        wall0 = time.monotonic()
        cores0 = psutil.cpu_times(percpu=True)
        # The calls' starts spread over at least 5 s (about one turn): calls in lockstep would all
        # speak, and be answered, at once, a burst no real line sees.
        ramp_s = max(0.02, RAMP_S / calls) * workers
        for i, count in enumerate(share):
            p = ctx.Process(target=bench_load.run_process, args=(
                target, sum(share[:i]), count, duration, str(tmp / f"calls-{i}.pkl"), 0.5, ramp_s,
                orphans if i == 0 else 0, pin.load))  # fmt: skip
            p.start()
            callers.append(p)
        measured.exclude |= {p.pid or 0 for p in callers}
        load_procs = {sim.pid or 0: f"{kind}-model-simulator"} | {p.pid or 0: f"{kind}-load-generator-{i}"
                                                                   for i, p in enumerate(callers)}  # fmt: skip
        spies = await _profile(profile, services | load_procs, duration) if profile else []
        caller_procs = [psutil.Process(p.pid) for p in callers]
        caller_cpu = [0.0] * len(callers)
        peak: dict[str, float] = {}
        while any(p.is_alive() for p in callers):  # sample: a finished process's CPU is gone
            for i, proc in enumerate(caller_procs):
                with contextlib.suppress(psutil.Error):
                    caller_cpu[i] = _cpu(proc)
            measured.sample_cpu()
            for group, mb in measured.memory_mb().items():
                peak[group] = max(peak.get(group, 0.0), mb)
            await asyncio.sleep(1.0)
        for p in callers:
            await asyncio.to_thread(p.join)
        for spy in spies:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(spy.wait(), 30)
        wall = time.monotonic() - wall0
        core_busy = _busy(cores0, psutil.cpu_times(percpu=True))
        measured.sample_cpu()
        sim_cpu = _cpu(sim_proc) - sim_cpu0
        results, orphan_sids, late_ms = [], [], []
        for i, p in enumerate(callers):
            path = tmp / f"calls-{i}.pkl"
            if not path.exists():  # the process died: each of its calls failed
                first = sum(share[:i])
                results += [CallResult(first + n, "?", error=f"load generator {i} exited with code {p.exitcode}")
                            for n in range(share[i])]  # fmt: skip
                continue
            data = pickle.loads(path.read_bytes())
            results += data["calls"]
            orphan_sids += data["orphans"]
            late_ms += data["late_ms"]
        # Every model socket should close: the calls' at once, the early ones within PREPARE_TTL_S;
        # the bridge's warm sockets (REALTIME_WARM_SOCKETS) stay open by design, no more of them.
        warm = int((env or {}).get("REALTIME_WARM_SOCKETS", "0")) if platform else 0
        deadline = time.monotonic() + (PREPARE_TTL_S + 5 if orphans else 10)
        while open_now.value > warm and time.monotonic() < deadline:  # noqa: ASYNC110 - another process's counter
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
        sockets_open = max(0, open_now.value - warm)
        sessions_json = await _fetch_sessions(platform, [r.call_sid for r in results]) if platform else {}
        cpu = measured.cpu_by_group()
        usage = {g: Usage(cpu.get(g, 0.0), idle.get(g, 0.0), peak.get(g, 0.0)) for g in sorted(set(cpu) | set(idle))}
        pinned_ok = ", ".join(f"{g} {sorted(c)}" for g, c in sorted(pinned.items()))
    finally:
        await stack.aclose()
        if reference is not None and reference.is_alive() and reference.pid:
            os.kill(reference.pid, signal.SIGTERM)
            await asyncio.to_thread(reference.join, 20)
        if sim.is_alive() and sim.pid is not None:
            os.kill(sim.pid, signal.SIGTERM)
        await asyncio.to_thread(sim.join, 60)
    report: SimReport = pickle.loads((tmp / "sim.pkl").read_bytes()) if (tmp / "sim.pkl").exists() else SimReport(
        errors=["the model simulator wrote no report"])
    return RunResult(kind, results, orphan_sids, report, usage,
                     {"model simulator": sim_cpu, "load generator": sum(caller_cpu)}, wall, sockets_open,
                     sessions_json, pinned_ok, late_ms, core_busy)  # fmt: skip


async def _profile(into: Path, services: dict[int, str], duration: float) -> list[asyncio.subprocess.Process]:
    """Start ``py-spy record`` on each service (and the load's processes) for the calls' duration: a
    flame graph per process in ``into``. Non-blocking (it never pauses the process), 100 samples a
    second."""
    into.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy")
    if spy is None:
        raise RuntimeError("--profile needs py-spy (pip install py-spy)")
    return [
        await asyncio.create_subprocess_exec(
            spy, "record", "--nonblocking", "-r", "100", "-d", str(max(1, int(duration))), "-p", str(pid),
            "-o", str(into / f"{name.replace(' ', '-')}.svg"),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        for pid, name in services.items()
        if name not in ("admin-api", "tool-runner")
    ]


def _busy(before: list[Any], after: list[Any]) -> dict[int, float]:
    """Each core's busy share between two ``psutil.cpu_times(percpu=True)``: everyone's, the other
    programs of a shared machine included."""
    out = {}
    for core, (a, b) in enumerate(zip(before, after, strict=False)):
        total = sum(b) - sum(a)
        idle = (b.idle + getattr(b, "iowait", 0.0)) - (a.idle + getattr(a, "iowait", 0.0))
        out[core] = (total - idle) / total if total > 0 else 0.0
    return out


async def _start_platform(stack: contextlib.AsyncExitStack, pin: Pinning, **kwargs: Any) -> Platform:
    """Start the platform with the bench's main thread on the platform's core. A port chosen free
    can be taken by another program before a service binds it (a shared machine): then again, on
    other ports, up to three times."""
    for attempt in range(3):
        platform = Platform(ports=Ports.free(), **kwargs)
        if pin.platform:
            os.sched_setaffinity(0, pin.platform)  # inherited by every service the platform starts
        try:
            await stack.enter_async_context(platform)
            return platform
        except RuntimeError as exc:
            if "address already in use" not in str(exc) or attempt == 2:
                raise
            print("bench: a port was taken meanwhile; starting the platform again on other ports", flush=True)
        finally:
            if pin.load:
                os.sched_setaffinity(0, pin.load)
    raise AssertionError("unreachable")


async def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")
