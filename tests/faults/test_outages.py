"""Scenario 4 of the fault suite: a part of the platform fails while five calls are in progress.

Each test holds five scripted calls at a turn boundary (greeting and first turn done, the caller
listening), injects the fault, and lets the calls go on through it. Afterwards every call's stored
transcript must be exactly what its caller said and heard, each line once; killed services are
restarted on the same ports and must serve again by themselves; during a database outage the admin
API must answer 503 quickly rather than hang, and each /healthz must say what is true.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from dialtone_dev.platform import Platform, Service
from dialtone_sim.polling import poll
from dialtone_sim.realtime import RealtimeSimulator
from dialtone_sim.twilio_api import FakeTwilioApi
from dialtone_sim.twilio_edge import SimCall, dial

from .conftest import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    FAULT_LINE,
    GREETING,
    SCENARIO,
    Answer,
    Figures,
    Servers,
    http_get,
)

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

CALLS = 5
QUIET_MS = 800
DB_OUTAGE_S = 20.0
SESSIONS_503_WITHIN_S = 2.0  # the admin API's promise for a request during a database outage
# /healthz checks the database within its own 2 s timeout; half a second more for a loaded machine.
HEALTHZ_503_WITHIN_S = 2.5
# The writer and the tool-runner ask PostgreSQL every 2 s with a 2 s deadline; a second more for a
# loaded machine.
WRITER_503_WITHIN_S = 5.0
TOOLS_503_WITHIN_S = 5.0
# Which services say 503 on /healthz while a server is gone (docs/CONTRACTS.md, "Health"): every
# service lives on NATS; the services whose work reads or writes PostgreSQL need it too. The call
# path (gateway, bridge) never touches the database, so it stays ready through a database outage.
NEEDS_NATS = ("media-gateway", "realtime-bridge", "tool-runner", "transcript-writer", "admin-api")
NEEDS_POSTGRES = ("tool-runner", "transcript-writer", "admin-api")
SETTLE_S = 75.0  # how long stored transcripts may take to catch up after a fault (redeliveries included)
FULL_CALL = [("agent", GREETING)] + [(role, text) for t in SCENARIO.turns for role, text in
                                     (("caller", t.caller), ("agent", t.agent))]


# ---- five scripted calls that pause where the test says ----------------------------------------
@dataclass
class Caller:
    call: SimCall | None = None
    heard: list[tuple[str, str]] = field(default_factory=list)  # lines said and answered, in order
    error: str | None = None


class Calls:
    """``CALLS`` scripted calls; each waits before the turns in ``pause_before`` until :meth:`go`."""

    def __init__(self, platform: Platform, pause_before: tuple[int, ...] = (1,), count: int = CALLS) -> None:
        self.platform = platform
        self.gates = {turn: asyncio.Event() for turn in pause_before}
        self.waiting = dict.fromkeys(pause_before, 0)
        self.callers = [Caller() for _ in range(count)]
        self.tasks: list[asyncio.Task] = []

    def start(self) -> Calls:
        self.tasks = [asyncio.create_task(self._converse(c, i)) for i, c in enumerate(self.callers)]
        _started.append(self)
        return self

    async def _converse(self, c: Caller, index: int) -> None:
        await asyncio.sleep(index * 0.1)  # not all on one 20 ms tick
        p = self.platform
        call = c.call = await dial(p.gateway_url, AUTH_TOKEN, public_base_url=p.public_base_url,
                                   account_sid=ACCOUNT_SID, from_=f"+1500555{7000 + index:04d}", to=FAULT_LINE)
        try:
            await call.wait_quiet(QUIET_MS, since=0, timeout=40)
            c.heard.append(("agent", GREETING))
            for i, turn in enumerate(SCENARIO.turns):
                if i in self.gates:
                    self.waiting[i] += 1
                    await self.gates[i].wait()
                    if call.closed:
                        return
                await call.say(turn.caller)
                await call.wait_quiet(QUIET_MS, timeout=40)
                c.heard += [("caller", turn.caller), ("agent", turn.agent)]
        except (ConnectionError, TimeoutError) as exc:
            c.error = f"{type(exc).__name__}: {exc}"
        finally:
            await call.hangup()

    async def at(self, turn: int, timeout: float = 60) -> None:
        """Wait until every call is waiting before ``turn`` (or has ended)."""
        await poll(lambda: self.waiting[turn] + sum(t.done() for t in self.tasks) >= len(self.tasks),
                   timeout, what=f"every call to reach turn {turn}")
        failed = [t.exception() for t in self.tasks if t.done() and t.exception()]
        assert not failed, f"calls failed before the fault: {failed}"
        assert not [c.error for c in self.callers if c.error], [c.error for c in self.callers]

    def go(self, turn: int) -> None:
        self.gates[turn].set()

    async def finish(self, timeout: float = 120) -> None:
        for gate in self.gates.values():
            gate.set()
        async with asyncio.timeout(timeout):
            await asyncio.gather(*self.tasks)

    def lines(self) -> int:
        """Lines said and answered so far, all calls together."""
        return sum(len(c.heard) for c in self.callers)

    @property
    def sids(self) -> list[str]:
        return [c.call.call_sid for c in self.callers if c.call]


_started: list[Calls] = []


async def end_calls(started: list[Calls]) -> None:
    """End every call a test started and forget them: tasks cancelled, callers hung up."""
    for calls in started:
        for task in calls.tasks:
            task.cancel()
        await asyncio.gather(*calls.tasks, return_exceptions=True)
        for c in calls.callers:
            if c.call is not None:
                await c.call.hangup()
    started.clear()


@pytest_asyncio.fixture(autouse=True, loop_scope="session")
async def leave_the_platform_whole(fault_platform: Platform, servers: Servers) -> AsyncIterator[None]:
    """Whatever a test did or failed to finish, the next one finds every server and service up and
    no call of the last test still going."""
    yield
    await end_calls(_started)
    await servers.ensure_running()
    dead = [s.name for s in fault_platform.services.values() if s.proc.returncode is not None]
    for name in dead:
        await fault_platform.start(name)
    await fault_platform.wait_healthy(timeout=60)


# ---- the admin API and health ----------------------------------------------------------------
class Admin:
    def __init__(self, platform: Platform) -> None:
        self.url, self.token = platform.admin_url, platform.admin_token

    async def get(self, path: str, timeout: float = 10.0) -> Answer:
        return await http_get(self.url + path, token=self.token, timeout=timeout)


async def metric(url: str, name: str) -> float:
    """Sum of a Prometheus metric's samples at ``url`` (0 if the service does not answer)."""
    answer = await http_get(url, timeout=5)
    if answer.status != 200:
        return 0.0
    return sum(float(line.rpartition(" ")[2]) for line in answer.body.splitlines()
               if line.split("{", 1)[0].split(" ", 1)[0] == name)


async def _more(url: str, name: str, than: float) -> bool:
    return await metric(url, name) > than


async def health(service: Service, timeout: float = 5.0) -> int | None:
    return (await http_get(service.health_url, timeout=timeout)).status


async def transcripts_match(admin: Admin, calls: Calls, figures: dict[str, Any], timeout: float = SETTLE_S) -> None:
    """Wait until every call's session has ended and holds at least the lines its caller said and
    heard; then they must be exactly those lines, in order, each once."""
    stored: dict[str, list[tuple[str, str]]] = {}
    ended: dict[str, bool] = {}

    async def caught_up() -> bool:
        for c in calls.callers:
            sid = c.call.call_sid
            answer = await admin.get(f"/sessions/{sid}")
            if answer.status != 200:
                return False
            stored[sid] = [(line["role"], line["text"]) for line in answer.body["transcript"]]
            ended[sid] = bool(answer.body.get("ended_at"))
        return all(ended[c.call.call_sid] and len(stored[c.call.call_sid]) >= len(c.heard) for c in calls.callers)

    started = time.monotonic()
    try:
        await poll(caught_up, timeout, interval=0.5, what="the stored transcripts to catch up")
    except AssertionError:
        pass  # compared below, with what is missing
    else:
        figures["transcripts complete after (s)"] = time.monotonic() - started
    expected = sum(len(c.heard) for c in calls.callers)
    have = sum(len(stored.get(c.call.call_sid, [])) for c in calls.callers)
    doubled = sum(len(lines) - len(set(lines)) for lines in stored.values())
    figures["lines expected / stored"] = f"{expected} / {have}"
    figures["lines doubled"] = doubled
    for c in calls.callers:
        sid = c.call.call_sid
        assert ended.get(sid), f"{sid}: session never ended; stored {stored.get(sid)}"
        assert stored[sid] == c.heard, f"{sid}: stored transcript differs from the call\n  heard:  {c.heard}\n  stored: {stored[sid]}"


def no_caller_errors(calls: Calls) -> None:
    errors = {c.call.call_sid: c.error for c in calls.callers if c.error}
    assert not errors, f"calls broke off: {errors}"
    assert all(c.heard == FULL_CALL for c in calls.callers)


async def kill(platform: Platform, name: str) -> Service:
    service = platform.services[name]
    assert await service.stop(signal.SIGKILL) == -signal.SIGKILL
    return service


async def restart(platform: Platform, name: str, figures: dict[str, Any], killed_at: float) -> Service:
    service = await platform.start(name)  # same name, same ports, same environment
    await platform.wait_healthy(timeout=30, services=[service])
    figures["healthy again after restart (s)"] = time.monotonic() - killed_at
    return service


# ---- service kills -----------------------------------------------------------------------------
async def test_transcript_writer_killed_mid_calls_loses_and_doubles_no_line(fault_platform: Platform, figures: Figures):
    fig = figures.scenario("kill -9 transcript-writer")
    writer_metrics = fault_platform.services["transcript-writer"].health_url.replace("/healthz", "/metrics")
    calls = Calls(fault_platform, pause_before=(1, 2)).start()
    await calls.at(1)
    batches = await metric(writer_metrics, "dialtone_writer_batches_total")
    calls.go(1)
    # Killed as it writes the calls' second turns: a batch may be committed and not yet acknowledged.
    await poll(lambda: _more(writer_metrics, "dialtone_writer_batches_total", batches), 30, interval=0.02,
               what="the writer to write a batch of the second turns")
    killed_at = time.monotonic()
    await kill(fault_platform, "transcript-writer")
    lines_at_kill = calls.lines()
    await calls.at(2)  # every caller said and heard their second turn with no writer running
    fig["lines spoken while down"] = calls.lines() - lines_at_kill
    await restart(fault_platform, "transcript-writer", fig, killed_at)
    calls.go(2)
    await calls.finish()
    no_caller_errors(calls)
    await transcripts_match(Admin(fault_platform), calls, fig)
    assert fig["lines spoken while down"] > 0


async def test_tool_runner_killed_mid_calls_fails_tools_then_recovers(fault_platform: Platform, figures: Figures):
    fig = figures.scenario("kill -9 tool-runner")
    admin = Admin(fault_platform)
    calls = Calls(fault_platform, pause_before=(1, 2)).start()
    await calls.at(1)
    killed_at = time.monotonic()
    await kill(fault_platform, "tool-runner")
    calls.go(1)  # the second turn calls a tool: no runner to run it
    await calls.at(2)
    await restart(fault_platform, "tool-runner", fig, killed_at)
    calls.go(2)  # the third turn calls it again: the restarted runner must serve it
    await calls.finish()
    no_caller_errors(calls)
    await transcripts_match(admin, calls, fig)
    during, after = [], []
    for sid in calls.sids:
        tools = (await admin.get(f"/sessions/{sid}")).body["tool_calls"]
        assert [t["name"] for t in tools] == ["opening_hours", "opening_hours"], f"{sid}: {tools}"
        during.append(tools[0])
        after.append(tools[1])
    assert not [t for t in during if t["ok"]], "a tool call succeeded with no tool-runner running"
    assert all(t["error"] for t in during), during
    assert all(t["ok"] and t["result"]["open"] == "09:00" for t in after), f"tools after the restart: {after}"
    fig["tool call without a runner took (ms, max)"] = max(t["duration_ms"] or 0 for t in during)


async def test_media_gateway_killed_ends_its_calls_and_keeps_what_was_said(
    fault_platform: Platform, fault_realtime: RealtimeSimulator, figures: Figures
):
    fig = figures.scenario("kill -9 media-gateway")
    calls = Calls(fault_platform).start()
    await calls.at(1)
    killed_at = time.monotonic()
    await kill(fault_platform, "media-gateway")
    # Twilio's side of each call is a socket to the dead process: every call ends.
    await poll(lambda: all(c.call.closed for c in calls.callers), 10, what="the calls on the dead gateway to end")
    fig["calls ended after kill (s)"] = time.monotonic() - killed_at
    assert {c.call.ended_by for c in calls.callers} == {"gateway"}
    await restart(fault_platform, "media-gateway", fig, killed_at)
    await calls.finish()
    # What was said before the kill (greeting and first turn) is all there, once; nothing after it.
    assert all(c.heard == FULL_CALL[:3] for c in calls.callers), [c.heard for c in calls.callers]
    await transcripts_match(Admin(fault_platform), calls, fig)
    fig["sessions closed after kill (s)"] = time.monotonic() - killed_at
    # The restarted gateway takes new calls by itself.
    fresh = Calls(fault_platform, pause_before=(), count=1).start()
    await fresh.finish()
    no_caller_errors(fresh)
    await transcripts_match(Admin(fault_platform), fresh, {})


async def test_admin_api_killed_mid_calls_serves_every_line_after_restart(fault_platform: Platform, figures: Figures):
    fig = figures.scenario("kill -9 admin-api")
    calls = Calls(fault_platform, pause_before=(1, 2)).start()
    await calls.at(1)
    killed_at = time.monotonic()
    await kill(fault_platform, "admin-api")
    lines_at_kill = calls.lines()
    calls.go(1)
    await calls.at(2)  # every caller said and heard their second turn with no admin API running
    fig["lines spoken while down"] = calls.lines() - lines_at_kill
    await restart(fault_platform, "admin-api", fig, killed_at)
    calls.go(2)
    await calls.finish()
    no_caller_errors(calls)
    await transcripts_match(Admin(fault_platform), calls, fig)


# ---- NATS ---------------------------------------------------------------------------------------
NATS_DOWN_S = 2.0


async def test_nats_restart_mid_calls_neither_drops_nor_hands_over_a_call(
    fault_platform: Platform, servers: Servers, fault_twilio: FakeTwilioApi, figures: Figures
):
    fig = figures.scenario("NATS restart")
    services = {name: fault_platform.services[name] for name in NEEDS_NATS}
    calls = Calls(fault_platform).start()
    await calls.at(1)
    # The callers listen through the outage and speak again once the services are back on NATS.
    # Caller audio is core NATS (at most once): speech during the outage is not promised to arrive.
    stopped_at = time.monotonic()
    await servers.stop_nats()
    try:
        # Each service that lives on NATS says so on /healthz while it is gone, and why.
        for name, service in services.items():
            await poll(lambda s=service: _is(s, 503), NATS_DOWN_S, interval=0.05,
                       what=f"{name} /healthz to say 503 with NATS down")
        fig["every /healthz 503 after stop (s)"] = time.monotonic() - stopped_at
        for name, service in services.items():
            answer = await http_get(service.health_url, timeout=1.0)
            assert answer.status == 503 and "nats" in str(answer.body).lower(), f"{name}: {answer}"
            # Not ready, yet alive: an orchestrator must not restart it for an outage of NATS.
            alive = await http_get(service.health_url.replace("/healthz", "/livez"), timeout=1.0)
            assert alive.status == 200, f"{name} /livez: {alive}"
        await asyncio.sleep(max(0.0, stopped_at + NATS_DOWN_S - time.monotonic()))
    finally:
        await servers.start_nats()
    started_at = time.monotonic()
    fig["NATS down for (s)"] = started_at - stopped_at
    for name, service in services.items():
        await poll(lambda s=service: _is(s, 200), 20, interval=0.05, what=f"{name} /healthz to say 200 again")
    fig["every /healthz 200 after restart (s)"] = time.monotonic() - started_at
    calls.go(1)
    await calls.finish()
    no_caller_errors(calls)
    assert {c.call.ended_by for c in calls.callers} == {"caller"}
    await transcripts_match(Admin(fault_platform), calls, fig)
    # Nobody took a call over, and Twilio was never asked to apologise or hang up.
    admin = Admin(fault_platform)
    for sid in calls.sids:
        statuses = [s["status"] for s in (await admin.get(f"/sessions/{sid}")).body["status_history"]]
        assert not {"bridge_lost", "recovered"} & set(statuses), f"{sid} was handed over: {statuses}"
    touched = [r.path for r in fault_twilio.requests if any(sid in r.path for sid in calls.sids)]
    assert not touched, f"Twilio REST was used on calls that should simply have gone on: {touched}"


async def _is(service: Service, status: int) -> bool:
    return await health(service, 1.0) == status


# ---- PostgreSQL ----------------------------------------------------------------------------------
@dataclass
class Probe:
    """GETs one URL over and over from a thread of its own (so that the test's busy event loop does
    not add to the times), recording when each request was sent and what came back."""

    url: str
    token: str | None = None
    answers: list[tuple[float, Answer]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"probe {self.url}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # straight to 127.0.0.1
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                with opener.open(urllib.request.Request(self.url, headers=headers), timeout=10) as r:
                    r.read()
                    answer = Answer(r.status, time.monotonic() - sent, None, r.headers.get("Retry-After"))
            except urllib.error.HTTPError as exc:
                answer = Answer(exc.code, time.monotonic() - sent, None, exc.headers.get("Retry-After"))
            except OSError:
                answer = Answer(None, time.monotonic() - sent)
            self.answers.append((sent, answer))
            self._stop.wait(0.25)

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 15)

    def judge(self, window_start: float, outage_end: float, limit: float) -> list[str]:
        """Problems with the answers to requests sent during the outage: each must be a 503 with
        Retry-After within ``limit``, unless the database came back before ``limit`` was up."""
        problems = []
        for sent, a in self.answers:
            if sent < window_start or sent >= outage_end:
                continue
            answered_during = sent + a.seconds < outage_end
            if answered_during or sent + limit <= outage_end:
                if a.status != 503 or a.seconds > limit or a.retry_after is None:
                    problems.append(f"{self.url} at +{sent - window_start:.1f}s: {a.status} after {a.seconds:.2f}s "
                                    f"(Retry-After {a.retry_after})")
        return problems

    def first(self, status: int, after: float) -> float | None:
        for sent, a in self.answers:
            if sent >= after and a.status == status:
                return sent + a.seconds - after
        return None

    def slowest(self, window_start: float, outage_end: float) -> float:
        return max((a.seconds for sent, a in self.answers if window_start <= sent < outage_end), default=0.0)


async def database_outage(platform: Platform, fig: dict[str, Any], begin: Any, end: Any) -> None:
    """Five calls go on through ``DB_OUTAGE_S`` of database outage (``begin()`` .. ``end()``)."""
    admin = Admin(platform)
    writer = platform.services["transcript-writer"]
    runner = platform.services["tool-runner"]
    calls = Calls(platform).start()
    await calls.at(1)
    assert (await admin.get("/sessions?limit=5")).status == 200

    sessions = Probe(admin.url + "/sessions?limit=5", admin.token)
    healthz = Probe(platform.services["admin-api"].health_url)
    writer_health = Probe(writer.health_url)
    runner_health = Probe(runner.health_url)
    call_path = [Probe(platform.services[n].health_url) for n in NEEDS_NATS if n not in NEEDS_POSTGRES]
    probes = [sessions, healthz, writer_health, runner_health, *call_path]
    began = time.monotonic()
    state = await begin()
    try:
        try:
            established = time.monotonic()
            fig["fault in place after (s)"] = established - began
            for p in probes:
                p.start()
            # The calls go on during the outage: their lines wait in JetStream, and their tool
            # calls are answered (these tools need no database, though the runner is not ready).
            calls.go(1)
            reasons = await _not_ready_reasons(platform, WRITER_503_WITHIN_S + 1)
            await asyncio.sleep(max(0.0, began + DB_OUTAGE_S - time.monotonic()))  # hold the outage
        finally:
            ended = time.monotonic()
            await end(state)
        back = time.monotonic()
        fig["outage lasted (s)"] = back - began
        # The admin API recovers by itself: no restart, its pool reconnects.
        await poll(lambda: _admin_ok(admin), 30, interval=0.2, what="the admin API to answer 200 again")
        fig["admin /sessions 200 again after (s)"] = time.monotonic() - back
        await poll(lambda: _status(healthz.url, 200), 30, interval=0.2, what="admin /healthz to say 200 again")
        await calls.finish()
        no_caller_errors(calls)
        await transcripts_match(admin, calls, fig)
        await poll(lambda: _status(writer.health_url, 200), 30, interval=0.2,
                   what="the writer's /healthz to say 200 again")
        await poll(lambda: _status(runner.health_url, 200), 30, interval=0.2,
                   what="the tool-runner's /healthz to say 200 again")
        fig["tool-runner /healthz 200 again after (s)"] = time.monotonic() - back
    finally:
        await asyncio.gather(*(p.stop() for p in probes))

    fig["admin 503 first after (s)"] = sessions.first(503, began)
    fig["admin /sessions slowest during (s)"] = sessions.slowest(established, ended)
    fig["admin /healthz slowest during (s)"] = healthz.slowest(established, ended)
    writer_503 = writer_health.first(503, began)
    fig["writer /healthz 503 first after (s)"] = "never during the outage" if writer_503 is None else writer_503
    problems = sessions.judge(established, ended, SESSIONS_503_WITHIN_S)
    problems += healthz.judge(established, ended, HEALTHZ_503_WITHIN_S)
    assert not problems, "the admin API during the database outage:\n  " + "\n  ".join(problems)
    assert len([a for s, a in sessions.answers if established <= s < ended]) >= 5, "too few probes to judge"
    # The writer probes the database on a timer, so it says so within a few seconds too.
    assert writer_503 is not None and writer_503 <= WRITER_503_WITHIN_S, (
        f"the writer's /healthz said 503 after {writer_503} s of a {DB_OUTAGE_S:.0f} s outage")
    # So does the tool-runner (its tools use the database), and its /healthz, reading the probe's
    # last verdict, answers at once however the database fails.
    runner_503 = runner_health.first(503, began)
    fig["tool-runner /healthz 503 first after (s)"] = "never during the outage" if runner_503 is None else runner_503
    fig["tool-runner /healthz slowest during (s)"] = runner_health.slowest(established, ended)
    assert runner_503 is not None and runner_503 <= TOOLS_503_WITHIN_S, (
        f"the tool-runner's /healthz said 503 after {runner_503} s of a {DB_OUTAGE_S:.0f} s outage")
    assert runner_health.slowest(established, ended) < 1.0
    late = [(round(s - began, 1), a.status) for s, a in runner_health.answers
            if began + TOOLS_503_WITHIN_S <= s and s + a.seconds < ended and a.status != 503]
    assert not late, f"the tool-runner's /healthz during the outage, once it had noticed: {late}"
    # Each service that needs the database says why it is not ready.
    for name in NEEDS_POSTGRES:
        assert "database" in reasons[name], f"{name} /healthz during the outage: {reasons[name]!r}"
    # The call path does not need the database: its services stay healthy and say so.
    for p in call_path:
        bad = [(round(s - began, 1), a.status) for s, a in p.answers if a.status != 200]
        assert not bad, f"{p.url} during the database outage: {bad}"


async def _not_ready_reasons(platform: Platform, timeout: float) -> dict[str, str]:  # noqa: ASYNC109
    """Wait until every service in ``NEEDS_POSTGRES`` says 503; the reason each gives."""
    reasons: dict[str, str] = {}

    async def all_503() -> bool:
        for name in NEEDS_POSTGRES:
            if name not in reasons:
                answer = await http_get(platform.services[name].health_url, timeout=5)
                if answer.status == 503:
                    reasons[name] = str(answer.body)
        return len(reasons) == len(NEEDS_POSTGRES)

    try:
        await poll(all_503, timeout, interval=0.2, what=f"{', '.join(NEEDS_POSTGRES)} /healthz to say 503")
    except AssertionError as exc:  # say which service still claimed to be healthy, and what it said
        late = {name: await http_get(platform.services[name].health_url, timeout=5)
                for name in NEEDS_POSTGRES if name not in reasons}
        raise AssertionError(f"{exc}; still not 503: "
                             + ", ".join(f"{n} {a.status} {a.body!r}" for n, a in late.items())) from None
    return reasons


async def _admin_ok(admin: Admin) -> bool:
    return (await admin.get("/sessions?limit=5", timeout=5)).status == 200


async def _status(url: str, status: int) -> bool:
    return (await http_get(url, timeout=5)).status == status


async def test_postgres_stopped_20s_admin_answers_503_and_nothing_is_lost(
    fault_platform: Platform, servers: Servers, figures: Figures
):
    fig = figures.scenario("PostgreSQL stopped 20 s")

    async def begin() -> None:
        await servers.stop_postgres()

    async def end(_: None) -> None:
        await servers.start_postgres()

    await database_outage(fault_platform, fig, begin, end)


async def test_postgres_frozen_20s_admin_answers_503_and_nothing_is_lost(
    fault_platform: Platform, servers: Servers, figures: Figures
):
    fig = figures.scenario("PostgreSQL frozen (SIGSTOP) 20 s")

    async def begin() -> None:
        servers.freeze_postgres()

    async def end(_: None) -> None:
        servers.thaw_postgres()

    await database_outage(fault_platform, fig, begin, end)
