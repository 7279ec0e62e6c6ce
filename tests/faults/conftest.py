"""Fault-suite fixtures: one platform on NATS and PostgreSQL servers that this suite owns, so that
it can kill, restart, stop and freeze them under live calls.

The servers are always embedded (even with ``NATS_URL`` / ``DATABASE_URL`` set): a test may not
restart or freeze a server it does not own. Each keeps its data directory and port across restarts,
so the services reconnect to the same address and find the same JetStream stream and database.

Every scenario records its figures (time to 503, time to recovery, lines expected and stored) in
the session's :class:`Figures`; :func:`pytest_sessionfinish` hands them to
:mod:`dialtone_sim.summary`, which prints them at the end of the run, so they show in ``make test``
output. ``FAULTS_KEEP_LOGS=<dir>`` keeps the services' logs there
(the session's own directory is deleted at the end).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
import pytest_asyncio
from dialtone_common.embedded import embedded_nats, embedded_postgres, free_port
from dialtone_common.nats_auth import RunCredentials
from dialtone_dev.platform import Platform, Ports
from dialtone_sim.realtime import RealtimeSimulator
from dialtone_sim.scenario import Scenario, ToolCall, Turn
from dialtone_sim.summary import section
from dialtone_sim.twilio_api import FakeTwilioApi

HERE = Path(__file__).parent
ACCOUNT_SID = "AC" + "0" * 31 + "4"
AUTH_TOKEN = "faults-test-auth-token-0123456789"
FAULT_LINE = "+15005550090"
GREETING = "Fault line, hello."
HOURS = ToolCall("opening_hours", {"day": "Monday"})
# Short calls: the greeting and three turns; the second and third call a tool.
SCENARIO = Scenario(
    turns=[
        Turn(caller="Hello there.", agent="Hi, how can I help?"),
        Turn(caller="When are you open?", agent="Nine to five on Monday.", tools=[HOURS]),
        Turn(caller="And on Monday again?", agent="Still nine to five.", tools=[HOURS]),
    ],
)
AGENT_TOML = f"""
default = true
numbers = ["{FAULT_LINE}"]
tools = "*"
greeting = "{GREETING}"
[limits]
idle_prompt_s = 0
max_duration_s = 0
"""

_FIGURES = pytest.StashKey["Figures"]()


# ---- servers the suite controls -------------------------------------------------------------
class Servers:
    """Embedded NATS (JetStream) and PostgreSQL on fixed ports, each restartable on its data dir."""

    def __init__(self, root: Path) -> None:
        self.nats_dir, self.pg_dir = root / "nats", root / "pg"
        self.nats_port, self.pg_port = free_port(), free_port()
        self.nats_url = self.database_url = ""
        self.nats_credentials = RunCredentials.generate()  # the same users and passwords across restarts
        self._nats = contextlib.ExitStack()
        self._pg = contextlib.ExitStack()
        self._frozen: list[psutil.Process] = []
        self.nats_up = self.pg_up = False

    async def start_nats(self) -> None:
        self.nats_url = await asyncio.to_thread(self._nats.enter_context, embedded_nats(self.nats_dir, self.nats_port, credentials=self.nats_credentials))
        self.nats_up = True

    async def stop_nats(self) -> None:
        self.nats_up = False
        await asyncio.to_thread(self._nats.close)

    async def start_postgres(self) -> None:
        self.database_url = await asyncio.to_thread(
            self._pg.enter_context, embedded_postgres(self.pg_dir, self.pg_port)
        )
        self.pg_up = True

    def postmaster(self) -> psutil.Process:
        pid = int((self.pg_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
        return psutil.Process(pid)

    async def stop_postgres(self, timeout: float = 20.0) -> None:
        """Fast shutdown (SIGINT: clients are disconnected, as on a real ``pg_ctl stop -m fast``);
        a smart shutdown would wait for the services' pooled connections forever."""
        pid_file = self.pg_dir / "pgdata" / "postmaster.pid"
        self.pg_up = False
        self.postmaster().send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        while pid_file.exists():  # the postmaster removes it as it exits
            if time.monotonic() > deadline:
                raise AssertionError(f"PostgreSQL did not stop within {timeout}s")
            await asyncio.sleep(0.05)
        await asyncio.to_thread(self._pg.close)  # reaps the process

    def freeze_postgres(self) -> None:
        """SIGSTOP the postmaster and every process under it."""
        postmaster = self.postmaster()
        postmaster.suspend()  # first: a stopped postmaster forks no new backend
        self._frozen = [postmaster]
        for child in postmaster.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child.suspend()
                self._frozen.append(child)

    def thaw_postgres(self) -> None:
        """SIGCONT whatever :meth:`freeze_postgres` stopped."""
        frozen, self._frozen = self._frozen, []
        for proc in reversed(frozen):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.resume()

    async def ensure_running(self) -> None:
        """Undo whatever fault a failed test left in place."""
        self.thaw_postgres()
        if not self.nats_up:
            await self.stop_nats()  # whatever is left of it
            await self.start_nats()
        if not self.pg_up:
            await asyncio.to_thread(self._pg.close)
            await self.start_postgres()

    async def close(self) -> None:
        self.thaw_postgres()
        await asyncio.to_thread(self._nats.close)
        await asyncio.to_thread(self._pg.close)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def servers(tmp_root: Path) -> AsyncIterator[Servers]:
    from dialtone_writer.migrations import apply_migrations

    s = Servers(tmp_root / "faults-servers")
    try:
        await s.start_nats()
        await s.start_postgres()
        await apply_migrations(s.database_url)
        yield s
    finally:
        await s.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def fault_realtime() -> AsyncIterator[RealtimeSimulator]:
    async with RealtimeSimulator(SCENARIO, api_key="sk-test-faults", speed=4.0) as sim:
        yield sim


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def fault_twilio() -> AsyncIterator[FakeTwilioApi]:
    async with FakeTwilioApi(ACCOUNT_SID, AUTH_TOKEN) as api:
        yield api


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def fault_platform(
    tmp_root: Path, servers: Servers, fault_realtime: RealtimeSimulator, fault_twilio: FakeTwilioApi
) -> AsyncIterator[Platform]:
    agents = tmp_root / "faults-agents" / "faults"
    agents.mkdir(parents=True)
    (agents / "agent.toml").write_text(AGENT_TOML)
    (agents / "system.md").write_text("You are the fault-suite test agent of Acme.")
    p = Platform(
        data_dir=tmp_root / "faults-platform",
        ports=Ports.free(),
        nats_url=servers.nats_url,
        nats_credentials=servers.nats_credentials,
        database_url=servers.database_url,
        realtime_url=fault_realtime.url,
        openai_api_key="sk-test-faults",
        twilio_auth_token=AUTH_TOKEN,
        twilio_account_sid=ACCOUNT_SID,
        twilio_api_base_url=fault_twilio.base_url,
        agents_dir=agents.parent,
        tools_module=str(HERE / "fault_tools.py"),
        # A filler is an extra response the script does not plan for; the tools here are instant.
        extra_env={"LOG_LEVEL": "INFO", "FILLER_AFTER_S": "30"},
    )
    try:
        async with p:
            yield p
    finally:
        if keep := os.environ.get("FAULTS_KEEP_LOGS"):
            shutil.copytree(p.data_dir / "logs", keep, dirs_exist_ok=True)


# ---- figures --------------------------------------------------------------------------------
@dataclass
class Figures:
    """Per scenario, what was measured, in insertion order."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    def scenario(self, name: str) -> dict[str, Any]:
        return self.rows.setdefault(name, {})


@pytest.fixture(scope="session")
def figures(request: pytest.FixtureRequest) -> Figures:
    stash = request.config.stash
    if _FIGURES not in stash:
        stash[_FIGURES] = Figures()
    return stash[_FIGURES]


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The figures go to a section at the end of the run's output (:mod:`dialtone_sim.summary`)."""
    figures = session.config.stash.get(_FIGURES, None)
    if not figures or not figures.rows:
        return
    lines = section(session.config, "fault suite, scenario 4: figures (seconds unless stated)")
    for name, values in figures.rows.items():
        lines.append(f"{name}:")
        for key, value in values.items():
            lines.append(f"    {key:<42} {_show(value)}")


# ---- small helpers ---------------------------------------------------------------------------
@dataclass
class Answer:
    status: int | None  # None: no answer (refused, reset, client timeout)
    seconds: float
    body: Any = None
    retry_after: str | None = None


async def http_get(url: str, *, token: str | None = None, timeout: float = 10.0) -> Answer:
    """GET ``url``; never raises: a failure to connect or a timeout is an answer with no status."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    started = time.monotonic()
    try:
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                body = await r.json() if r.content_type == "application/json" else await r.text()
                return Answer(r.status, time.monotonic() - started, body, r.headers.get("Retry-After"))
    except (aiohttp.ClientError, OSError, TimeoutError):
        return Answer(None, time.monotonic() - started)
