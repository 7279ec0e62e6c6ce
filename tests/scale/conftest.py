"""Scale-suite fixtures: one platform with two instances of every service, the two media-gateways
behind a round-robin load balancer that is the platform's public URL (as Caddy or a Kubernetes
Service is in production).

The platform runs on an embedded NATS and PostgreSQL of its own (even with ``NATS_URL`` /
``DATABASE_URL`` set): on a shared NATS, the bridges of another platform of the same test session
would be in the same offer queue group and take this suite's calls; and the test counts rows in
the database, which must hold this suite's calls only.

Every figure the suite measures is printed at the end of the run (:func:`pytest_sessionfinish`).
``SCALE_KEEP_LOGS=<dir>`` keeps the services' logs there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from dialtone_common.embedded import embedded_nats, embedded_postgres
from dialtone_common.nats_auth import RunCredentials
from dialtone_dev.platform import SERVICES, Platform, Ports
from dialtone_sim.balancer import Backend, Balancer
from dialtone_sim.realtime import RealtimeSimulator
from dialtone_sim.scenario import Scenario, ToolCall, Turn
from dialtone_sim.summary import section
from dialtone_sim.twilio_api import FakeTwilioApi

HERE = Path(__file__).parent
ACCOUNT_SID = "AC" + "0" * 31 + "5"
AUTH_TOKEN = "scale-test-auth-token-0123456789a"
LINE = "+15005550080"
GREETING = "Scale line, hello."
CALLS = 10
# Each bridge takes at most this many calls, so ten calls are shared between the two whatever the
# queue group's random choice: a full bridge refuses the offer and the gateway offers it again.
MAX_CALLS_PER_BRIDGE = 6
# Short calls: the greeting and two turns, each with a tool call (every line its own words, so a
# line stored twice is seen as such).
SCENARIO = Scenario(
    turns=[
        Turn(caller="Any blue paint?", agent="Yes, blue paint is in stock.",
             tools=[ToolCall("check_stock", {"item": "blue paint"})]),
        Turn(caller="Deliver it Friday.", agent="Delivery booked for Friday.",
             tools=[ToolCall("book_delivery", {"day": "Friday"})]),
    ],
)  # fmt: skip
TOOLS_PER_CALL = sum(len(t.tools) for t in SCENARIO.turns)
AGENT_TOML = f"""
default = true
numbers = ["{LINE}"]
tools = "*"
greeting = "{GREETING}"
[limits]
idle_prompt_s = 0
max_duration_s = 0
"""

_FIGURES = pytest.StashKey[dict[str, Any]]()


@pytest.fixture(scope="module")
def figures(request: pytest.FixtureRequest) -> dict[str, Any]:
    stash = request.config.stash
    if _FIGURES not in stash:
        stash[_FIGURES] = {}
    return stash[_FIGURES]


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The figures go to a section at the end of the run's output (:mod:`dialtone_sim.summary`)."""
    figures = session.config.stash.get(_FIGURES, None)
    if not figures:
        return
    lines = section(session.config, "scale suite: two instances of every service (figures)")
    for key, value in figures.items():
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        lines.append(f"    {key:<48} {shown}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scale_servers(tmp_root: Path) -> AsyncIterator[tuple[str, str, RunCredentials]]:
    """NATS (JetStream) and PostgreSQL of this suite's own, migrated."""
    from dialtone_writer.migrations import apply_migrations

    stack = contextlib.ExitStack()
    credentials = RunCredentials.generate()
    try:
        nats_start = asyncio.to_thread(stack.enter_context, embedded_nats(tmp_root / "scale-nats", credentials=credentials))
        pg_start = asyncio.to_thread(stack.enter_context, embedded_postgres(tmp_root / "scale-pg"))
        nats_url, database_url = await asyncio.gather(nats_start, pg_start)
        await apply_migrations(database_url)
        yield nats_url, database_url, credentials
    finally:
        await asyncio.to_thread(stack.close)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scale_realtime() -> AsyncIterator[RealtimeSimulator]:
    async with RealtimeSimulator(SCENARIO, api_key="sk-test-scale", speed=4.0) as sim:
        yield sim


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scale_twilio() -> AsyncIterator[FakeTwilioApi]:
    async with FakeTwilioApi(ACCOUNT_SID, AUTH_TOKEN) as api:
        yield api


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def balancer() -> AsyncIterator[Balancer]:
    """The public URL: started first (every gateway is configured with its URL), backends later.

    Least connections, as one would configure for long-lived WebSockets: with plain round-robin,
    calls placed one after another alternate webhook, stream, webhook, stream, and every media
    stream would land on the same gateway."""
    async with Balancer(policy="least_connections") as lb:
        yield lb


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scale_platform(
    tmp_root: Path,
    scale_servers: tuple[str, str, RunCredentials],
    scale_realtime: RealtimeSimulator,
    scale_twilio: FakeTwilioApi,
    balancer: Balancer,
    figures: dict[str, Any],
) -> AsyncIterator[Platform]:
    """Two instances of each of the five services; the gateways behind ``balancer``."""
    nats_url, database_url, nats_credentials = scale_servers
    agents = tmp_root / "scale-agents" / "scale"
    agents.mkdir(parents=True)
    (agents / "agent.toml").write_text(AGENT_TOML)
    (agents / "system.md").write_text("You are the scale-test agent of Acme.")
    p = Platform(
        data_dir=tmp_root / "scale-platform",
        ports=Ports.free(),
        nats_url=nats_url,
        nats_credentials=nats_credentials,
        database_url=database_url,
        realtime_url=scale_realtime.url,
        openai_api_key="sk-test-scale",
        twilio_auth_token=AUTH_TOKEN,
        twilio_account_sid=ACCOUNT_SID,
        twilio_api_base_url=scale_twilio.base_url,
        public_base_url=balancer.url,  # every gateway signs and checks against the one public URL
        agents_dir=agents.parent,
        tools_module=str(HERE / "scale_tools.py"),
        # A filler is an extra response the script does not plan for; the tools here are quick.
        extra_env={"LOG_LEVEL": "INFO", "FILLER_AFTER_S": "30", "MAX_CALLS": str(MAX_CALLS_PER_BRIDGE)},
    )
    started = time.monotonic()
    try:
        async with p:  # the first instance of each service
            seconds = [await p.start_instance(name, f"{name}-2") for name in SERVICES]
            await p.wait_healthy(timeout=60, services=seconds)
            balancer.set_backends(
                [Backend("127.0.0.1", s.port, s.health_url) for s in p.instances("media-gateway")]
            )
            await balancer.wait_healthy(2)
            figures["platform of 10 processes up after (s)"] = time.monotonic() - started
            yield p
    finally:
        if keep := os.environ.get("SCALE_KEEP_LOGS"):
            shutil.copytree(p.data_dir / "logs", keep, dirs_exist_ok=True)
