"""End-to-end fixtures: the five services as real processes, with the Twilio edge, the Twilio
REST API, the OpenAI Realtime API and OpenAI GPT-Live simulated (the ``live`` agent answers on
GPT-Live, every other one on Realtime). One platform serves the whole session (starting
five Python processes takes seconds); each test sets the simulator's scenario it needs."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from dialtone_common.nats_auth import EVAL_WORKER, SERVICE_USERS
from dialtone_dev.platform import Platform, Ports
from dialtone_sim.live import LiveSimulator
from dialtone_sim.polling import poll
from dialtone_sim.realtime import RealtimeSimulator
from dialtone_sim.responses_api import ResponsesSimulator
from dialtone_sim.twilio_api import FakeTwilioApi

ACCOUNT_SID = "AC" + "0" * 31 + "1"
HERE = Path(__file__).parent
ROOT = HERE.parents[1]
LAB = "+15005550096"  # all tools, long greeting, no idle prompts
QUICK = "+15005550099"  # idle prompts after 1.5 s, two prompts
BRIEF = "+15005550098"  # calls last at most 6 s
ANSWERPHONE = "+15005550097"  # hangs up on voicemail
LIVE = "+15005550095"  # the GPT-Live agent (engine = "live"), all tools
ANALYST = "+15005550094"  # a post-call analysis with extraction fields (test_analysis.py)
PRIVATE = "+15005550093"  # redacts card numbers and emails (test_redaction.py)
# The conversation suite on both engines (test_engines.py): the same agent on each engine, and a
# quick-idle one, told apart only by ``engine``.
DESK = {"realtime": "+15005550089", "live": "+15005550088"}
DESK_IDLE = {"realtime": "+15005550087", "live": "+15005550086"}
DESK_HANDOFF = {"realtime": "billing", "live": "desk-billing-live"}

TEST_AGENTS = {
    "lab": f"""
numbers = ["{LAB}"]
tools = "*"
redact = []  # keypad digits and tool data stored as they are (test_conversation checks them)
greeting = "Welcome to the Acme laboratory line. This greeting is long on purpose, so that a caller has time to interrupt it before it ends."
filler = "One moment, I am still checking that for you."
[limits]
idle_prompt_s = 0
max_duration_s = 0
""",
    "quick": f"""
numbers = ["{QUICK}"]
greeting = "Hi, quick line."
idle_prompt = "Are you still there?"
goodbye = "It seems you have stepped away. Goodbye!"
[limits]
idle_prompt_s = 1.5
idle_prompts = 2
max_duration_s = 0
""",
    "brief": f"""
numbers = ["{BRIEF}"]
greeting = "Hi, brief line."
goodbye = "We have reached our time limit for this call. Goodbye!"
[limits]
idle_prompt_s = 0
max_duration_s = 6
""",
    "answerphone": f"""
numbers = ["{ANSWERPHONE}"]
voicemail = "hangup"
[limits]
idle_prompt_s = 0
""",
    "live": f"""
numbers = ["{LIVE}"]
engine = "live"
live_model = "gpt-live-1.1"
backend_model = "gpt-5.4-mini"
backend_instructions = "Look callers up by phone number before answering account questions. Set the outcome before the call ends."
voice = "marin"
tools = "*"
greeting = "Thanks for calling Acme live support. How can I help you today?"
[limits]
idle_prompt_s = 0
max_duration_s = 0
""",
    "private": f"""
numbers = ["{PRIVATE}"]
tools = "*"
greeting = "Hello, Acme payments."
redact = ["card_number", "email"]
[limits]
idle_prompt_s = 0
max_duration_s = 0
""",
    "analyst": f"""
numbers = ["{ANALYST}"]
greeting = "Hello, Acme orders."
[limits]
idle_prompt_s = 0
max_duration_s = 0
[analysis]
summary = true
success_criteria = "The caller learnt where their order is, or a callback was arranged."
[analysis.schema]
type = "object"
[analysis.schema.properties.reason]
type = "string"
description = "Why the caller called, in a few words."
[analysis.schema.properties.order_id]
type = ["string", "null"]
[analysis.schema.properties.callback_requested]
type = "boolean"
[analysis.schema.properties.sentiment]
type = "string"
enum = ["positive", "neutral", "negative"]
""",
}


def _desk(engine: str) -> str:
    suffix = "" if engine == "realtime" else "-live"
    return f"""
numbers = ["{DESK[engine]}"]
engine = "{engine}"
tools = "*"
redact = []  # keypad digits stored as they are (the DTMF test checks them)
greeting = "Welcome to the Acme front desk. This greeting is long on purpose, so that a caller has time to interrupt it."
filler = "One moment, I am still checking that for you."
transfer_number = "+15005550010"
voicemail = "leave_message"
voicemail_message = "Hi, this is the Acme front desk returning your call. Goodbye."
handoffs = ["{DESK_HANDOFF[engine]}"]
[limits]
idle_prompt_s = 0
max_duration_s = 0
""", f"""
numbers = ["{DESK_IDLE[engine]}"]
engine = "{engine}"
greeting = "Hi, front desk."
idle_prompt = "Are you still there?"
goodbye = "It seems you have stepped away. Goodbye!"
[limits]
idle_prompt_s = 1.5
idle_prompts = 2
max_duration_s = 0
""", suffix


for _engine in ("realtime", "live"):
    _config, _idle, _suffix = _desk(_engine)
    TEST_AGENTS[f"desk{_suffix}"] = _config
    TEST_AGENTS[f"desk-idle{_suffix}"] = _idle
TEST_AGENTS["desk-billing-live"] = """
engine = "live"
tools = ["lookup_customer", "set_outcome", "end_call"]
[limits]
idle_prompt_s = 0
max_duration_s = 0
"""


def make_agents_dir(target: Path) -> Path:
    """The repository's agents plus a few with settings the tests need (short limits)."""
    shutil.copytree(ROOT / "agents", target)
    for name, config in TEST_AGENTS.items():
        (target / name).mkdir()
        (target / name / "agent.toml").write_text(config)
        (target / name / "system.md").write_text(f"You are the {name} test agent of Acme.")
    return target
AUTH_TOKEN = "e2e-test-auth-token-0123456789ab"


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def realtime() -> AsyncIterator[RealtimeSimulator]:
    async with RealtimeSimulator(api_key="sk-test-e2e", speed=4.0) as sim:
        yield sim


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def live() -> AsyncIterator[LiveSimulator]:
    async with LiveSimulator(api_key="sk-test-e2e") as sim:
        yield sim


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def responses_api() -> AsyncIterator[ResponsesSimulator]:
    """The Responses API of post-call analyses (the writer's OPENAI_BASE_URL)."""
    async with ResponsesSimulator(api_key="sk-test-e2e") as sim:
        yield sim


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def twilio_api() -> AsyncIterator[FakeTwilioApi]:
    async with FakeTwilioApi(ACCOUNT_SID, AUTH_TOKEN) as api:
        yield api


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def platform(
    tmp_root: Path, database_url: str, realtime: RealtimeSimulator, live: LiveSimulator,
    twilio_api: FakeTwilioApi, responses_api: ResponsesSimulator,
) -> AsyncIterator[Platform]:
    """The platform with its own embedded NATS, which asks every client for credentials: each
    service connects as its own user, held to its permissions (dialtone_common.nats_auth)."""
    p = Platform(
        data_dir=tmp_root / "platform",
        ports=Ports.free(),
        database_url=database_url,
        realtime_url=realtime.url,
        live_url=live.url,
        responses_url=responses_api.base_url,
        openai_api_key="sk-test-e2e",
        twilio_auth_token=AUTH_TOKEN,
        twilio_account_sid=ACCOUNT_SID,
        twilio_api_base_url=twilio_api.base_url,
        agents_dir=make_agents_dir(tmp_root / "agents"),
        tools_module=str(HERE / "e2e_tools.py"),
        extra_env={"LOG_LEVEL": "INFO", "PREPARE_TTL_S": "4"},
    )
    async with p:
        yield p
        # No service was ever refused something it tried to do on the bus: its permissions cover
        # everything the whole suite made it do. (test_bus_auth's probes, connections named
        # e2e-probe, are refused on purpose.)
        service_users = {u.name for u in SERVICE_USERS.values()} | {EVAL_WORKER.name}  # the Tests page's worker
        violations = [v for v in p.nats_violations(service_users) if ':e2e-probe"' not in v]
        assert not violations, "services broke their NATS permissions:\n" + "\n".join(violations[:30])


def replies(session: Any) -> list[bytes]:
    """Every reply a Realtime simulator session generated, in the order it generated them."""
    return [bytes(session.output_audio[item_id]) for item_id in session.output_order]


def heard_in_order(heard: bytes, pieces: list[bytes]) -> bool:
    """Every piece of agent audio is in what the caller heard, whole and in this order."""
    position = 0
    for piece in pieces:
        found = heard.find(piece, position)
        if found < 0:
            return False
        position = found + len(piece)
    return True


class Admin:
    """A small client of the admin API."""

    def __init__(self, platform: Platform) -> None:
        self.url, self.token = platform.admin_url, platform.admin_token

    async def get(self, path: str, **params: Any) -> tuple[int, Any]:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {self.token}"}) as http:
            async with http.get(self.url + path, params=params) as r:
                return r.status, (await r.json() if r.content_type == "application/json" else await r.text())

    async def session(self, call_sid: str, timeout: float = 20.0) -> dict[str, Any]:
        """The call's session once it has ended and every event is written."""

        async def ended() -> dict[str, Any] | None:
            status, body = await self.get(f"/sessions/{call_sid}")
            return body if status == 200 and body.get("ended_at") else None

        return await poll(ended, timeout, what=f"session {call_sid} to end")


@pytest.fixture
def admin(platform: Platform) -> Admin:
    return Admin(platform)


async def metric(url: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus metric's samples matching ``labels`` at ``url``."""
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        text = await r.text()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric_name = head.split("{", 1)[0]
        if metric_name != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total
