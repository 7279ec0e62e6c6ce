"""Running scenarios: test calls through the real call path, each judged from the admin API.

A run places each scenario's call ``runs`` times, ``concurrency`` calls at a time per platform (the
model simulators tell the calls apart by a tag in the caller's silence, each with its script; see
``dialtone_sim.audio.tag_frame``). A call dials the gateway's signed voice webhook with
``?agent=<agent>`` and two variables the runner owns, ``dialtone_eval`` (the run's id: the call is
a test call, kept out of the overview's counts and costs) and ``dialtone_mocks`` (the scenario's tool mocks, which the tool-runner answers instead of
running those tools). The caller speaks on a simulated Twilio edge; the session it produced is
read back from the admin API, as an operator would see it, and judged (:mod:`eval_expect`).

Where calls go (:class:`OwnPlatform`): by default a platform of the run's own, with its own
embedded NATS and PostgreSQL. Without ``OPENAI_API_KEY`` the model is Dialtone's Realtime and
GPT-Live simulators, which say what the scenario's ``model`` block scripts: that tests the
plumbing (audio, tools, mocks, transfers, the writer), not the agent's prompt. With the key, the
real models answer. ``--running`` uses the platform ``make run`` started instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import json
import secrets
import shutil
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import yarl

from dialtone_dev.eval_caller import PersonaError, Voice, persona_turn, run_script, settle
from dialtone_dev.eval_expect import Check, check_session
from dialtone_dev.eval_judge import judge_criteria
from dialtone_dev.eval_scenarios import Scenario

__all__ = ["EvalOptions", "Progress", "RunResult", "Target", "run_on", "run_scenarios"]

Engine = Literal["realtime", "live"]
# Told of each call's verdict as it comes (the command prints it; the worker stores and publishes it).
Progress = Callable[["RunResult"], Awaitable[None] | None]
ACCOUNT_SID = "AC" + "e" * 32
SESSION_TIMEOUT_S = 30.0


@dataclass
class EvalOptions:
    """What to run and how (the command's options; ``make eval`` passes its variables here)."""

    agents_dir: Path
    runs: int = 1
    concurrency: int = 4  # test calls at once on each platform
    agent: str | None = None
    threshold: float | None = None  # pass rate a scenario without its own `pass_rate` needs (default 1.0)
    running: bool = False
    openai_api_key: str | None = None
    openai_base_url: str | None = None  # the text models' (persona, judge) Responses API base
    # Answer with Dialtone's model simulators (default: when there is no key). The tests set it
    # with a key for the text models, which a Responses API simulator answers.
    simulate_models: bool | None = None
    eval_model: str = "gpt-5-mini"
    tts_voice: str = "alloy"
    data_dir: Path = Path(".dialtone")


@dataclass
class RunResult:
    """One test call of a scenario and its verdict."""

    scenario: str
    agent: str
    run: int
    engine: str
    call_sid: str | None
    call_url: str | None
    checks: list[Check] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    transcript: list[str] = field(default_factory=list)  # "Agent: ..." / "Caller: ..." lines
    end_reason: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[str]:
        out = [f"error: {self.error}"] if self.error else []
        for c in self.checks:
            if not c.passed:
                out.append(f"{c.name}: expected {c.expected}" + (f", {c.actual}" if c.actual else "")
                           + (f" (judge: {c.reasoning})" if c.reasoning else ""))  # fmt: skip
        return out


@dataclass
class Target:
    """A platform to call: where its gateway and admin API are, how to sign, and (offline) the
    model simulators whose script each call sets."""

    gateway_url: str
    public_base_url: str
    admin_url: str
    admin_token: str
    auth_token: str
    account_sid: str
    engine: str | None  # every agent on this engine, or None: each agent's own
    simulators: list[Any] = field(default_factory=list)  # RealtimeSimulator, LiveSimulator


def simulated(options: EvalOptions) -> bool:
    """Whether the voice models are Dialtone's simulators (no key, or asked for)."""
    return options.simulate_models if options.simulate_models is not None else not options.openai_api_key


def agent_config(agents_dir: Path, agent: str) -> dict[str, Any]:
    try:
        return tomllib.loads((agents_dir / agent / "agent.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def agents_on_engine(source: Path, target: Path, engine: Engine) -> Path:
    """A copy of the agents directory with every agent on ``engine`` (the command's ``ENGINE``).
    A top-level key must precede the tables, so the setting goes first in each file."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("scenarios"))
    for path in target.glob("*/agent.toml"):
        lines = [line for line in path.read_text().splitlines() if not line.replace(" ", "").startswith("engine=")]
        path.write_text("\n".join([f'engine = "{engine}"', *lines]) + "\n")
    return target


@contextlib.asynccontextmanager
async def own_platform(options: EvalOptions, engine: Engine | None, workdir: Path) -> AsyncIterator[Target]:
    """A platform of the run's own, with the model simulators unless a key is given."""
    from dialtone_sim.live import LiveSimulator
    from dialtone_sim.realtime import RealtimeSimulator
    from dialtone_sim.responses_api import ResponsesSimulator
    from dialtone_sim.twilio_api import FakeTwilioApi

    from dialtone_dev.platform import Platform, Ports

    key = None if simulated(options) else options.openai_api_key
    agents = agents_on_engine(options.agents_dir, workdir / "agents", engine) if engine else options.agents_dir
    auth_token = secrets.token_hex(16)
    async with contextlib.AsyncExitStack() as stack:
        twilio = await stack.enter_async_context(FakeTwilioApi(ACCOUNT_SID, auth_token))
        sims: list[Any] = []
        realtime_url = live_url = responses_url = None
        sim_key = "sk-eval-simulated"
        if not key:
            realtime = await stack.enter_async_context(RealtimeSimulator(api_key=sim_key, speed=4.0))
            live = await stack.enter_async_context(LiveSimulator(api_key=sim_key))
            responses = await stack.enter_async_context(ResponsesSimulator(api_key=sim_key))
            sims = [realtime, live]
            realtime_url, live_url, responses_url = realtime.url, live.url, responses.base_url
        platform = Platform(
            data_dir=workdir / "platform", ports=Ports.free(), realtime_url=realtime_url, live_url=live_url,
            responses_url=responses_url, openai_api_key=key or sim_key, twilio_auth_token=auth_token,
            twilio_account_sid=ACCOUNT_SID, twilio_api_base_url=twilio.base_url, agents_dir=agents,
            extra_env={"LOG_LEVEL": "WARNING"},
        )  # fmt: skip
        await stack.enter_async_context(platform)
        yield Target(platform.gateway_url, platform.public_base_url or platform.gateway_url, platform.admin_url,
                     platform.admin_token, auth_token, ACCOUNT_SID, engine, sims)  # fmt: skip


def running_platform(options: EvalOptions) -> Target:
    """The platform ``make run`` started (its ``run.json``)."""
    from dialtone_dev.call import signing_token
    from dialtone_dev.run import RUN_FILE
    from dialtone_dev.settings import DevSettings

    path = options.data_dir / RUN_FILE
    try:
        run = json.loads(path.read_text())
    except (OSError, ValueError):
        raise LookupError(f"no running platform ({path} missing): start it with `make run`") from None
    if run.get("simulated"):
        raise LookupError("the running platform answers with its model simulators, which cannot follow a "
                          "scenario's `model` script: run `make eval` on a platform of its own (the default), "
                          "or start `make run` with OPENAI_API_KEY")  # fmt: skip
    token = signing_token(DevSettings(), run)
    return Target(run["gateway_url"], run["public_base_url"], run["admin_url"], run["admin_token"], token,
                  run["twilio_account_sid"], None)  # fmt: skip


class AdminClient:
    """The admin API, as the runner reads test calls back."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._http = aiohttp.ClientSession(headers={"Authorization": f"Bearer {target.admin_token}"})

    async def close(self) -> None:
        await self._http.close()

    async def session(self, call_sid: str) -> dict[str, Any] | None:
        async with self._http.get(f"{self.target.admin_url}/sessions/{call_sid}") as r:
            return await r.json() if r.status == 200 else None

    async def ended_session(self, call_sid: str, timeout: float = SESSION_TIMEOUT_S) -> dict[str, Any]:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = await self.session(call_sid)
            if last and last.get("ended_at"):
                return last
            await asyncio.sleep(0.25)
        raise TimeoutError(f"the call's session did not end within {timeout:g} s" + ("" if last else " (never written)"))


def sim_script(scenario: Scenario) -> Any:
    """The simulators' script for the scenario's call (their ``Scenario``)."""
    from dialtone_sim.scenario import Scenario as SimScenario

    model = scenario.spec.model
    if model is None:
        return SimScenario()
    return SimScenario.from_dict(model.model_dump(exclude_none=True))


def dial_path(scenario: Scenario, run_id: str) -> str:
    variables = dict(scenario.spec.caller.variables)
    variables["dialtone_eval"] = run_id
    if scenario.spec.mocks:
        mocks = {name: m.model_dump(include=m.model_fields_set) for name, m in scenario.spec.mocks.items()}
        variables["dialtone_mocks"] = json.dumps(mocks, separators=(",", ":"))
    query = [("agent", scenario.agent)] + [(f"v_{k}", v) for k, v in variables.items()]
    # Encoded as yarl (under aiohttp) sends it, since the signature covers the URL as sent.
    return str(yarl.URL.build(path="/twilio-voice", query=query))


async def _persona(call: Any, scenario: Scenario, options: EvalOptions, admin: AdminClient, voice: Voice) -> None:
    """The persona's turns: hear the agent (its transcript lines), say the model's next line."""
    from openai import AsyncOpenAI

    persona = scenario.spec.caller.persona
    assert persona is not None
    client = AsyncOpenAI(api_key=options.openai_api_key, base_url=options.openai_base_url)
    greeting = bool(agent_config(options.agents_dir, scenario.agent).get("greeting"))
    mark = 0
    try:
        await settle(call, 0, 10.0 if greeting else 0.5)
        for _ in range(persona.max_turns):
            transcript = await _heard_lines(admin, call.call_sid)
            line, done = await persona_turn(client, persona.model or options.eval_model, persona, transcript)
            if line:
                await call.say(await voice.speak(line))
            mark = len(call.media_received)
            await settle(call, mark, 10.0)
            if done:
                break
    except ConnectionError:
        return
    finally:
        await client.close()
    await call.hangup()


async def _heard_lines(admin: AdminClient, call_sid: str) -> list[tuple[str, str]]:
    """The conversation so far as the call's transcript has it (written within a second or so)."""
    session = await admin.session(call_sid) or {}
    return [("Agent" if line["role"] == "agent" else "You", line.get("text") or "")
            for line in session.get("transcript") or []]  # fmt: skip


def _engine(target: Target, options: EvalOptions, scenario: Scenario) -> str:
    """The engine a scenario's call runs on: the target's for every agent, else the agent's own."""
    return target.engine or str(agent_config(options.agents_dir, scenario.agent).get("engine", "realtime"))


async def run_once(target: Target, scenario: Scenario, run: int, options: EvalOptions, run_id: str,
                   admin: AdminClient, voice: Voice, tag: int = 0) -> RunResult:  # fmt: skip
    """One test call. With the model simulators, the caller's silence carries ``tag`` and the
    simulators hold the scenario's script under it, so other calls can run at the same time."""
    result = RunResult(scenario.key, scenario.agent, run, _engine(target, options, scenario), None, None)
    started = time.monotonic()
    for sim in target.simulators:
        sim.scripts[tag] = sim_script(scenario)
    voice = dataclasses.replace(voice, _seed=0)  # the call's own synthesized lines, whatever runs beside it
    try:
        return await _call(target, scenario, options, run_id, admin, voice, result, started,
                           tag if target.simulators else None)  # fmt: skip
    finally:
        for sim in target.simulators:
            sim.scripts.pop(tag, None)


async def _call(target: Target, scenario: Scenario, options: EvalOptions, run_id: str, admin: AdminClient,
                voice: Voice, result: RunResult, started: float, tag: int | None) -> RunResult:  # fmt: skip
    from dialtone_sim.twilio_edge import dial

    caller = scenario.spec.caller
    numbers = agent_config(options.agents_dir, scenario.agent).get("numbers") or ["+15005550000"]
    try:
        call = await dial(target.gateway_url, target.auth_token, public_base_url=target.public_base_url,
                          account_sid=target.account_sid, from_=caller.number, to=str(numbers[0]),
                          webhook_path=dial_path(scenario, run_id), tag=tag)  # fmt: skip
    except Exception as exc:
        result.error = f"the call could not be placed: {exc}"
        return result
    result.call_sid = call.call_sid
    result.call_url = f"{target.admin_url}/calls/{call.call_sid}"
    try:
        if caller.script is not None:
            greeting = bool(agent_config(options.agents_dir, scenario.agent).get("greeting"))
            await run_script(call, caller.script, voice, greeting=greeting, end_wait_s=caller.end_wait_s)
        else:
            await _persona(call, scenario, options, admin, voice)
        session = await admin.ended_session(call.call_sid)
        result.end_reason = session.get("end_reason")
        result.transcript = [f"{'Agent' if line['role'] == 'agent' else 'Caller'}: {line.get('text') or ''}"
                             for line in session.get("transcript") or []]  # fmt: skip
        result.checks = check_session(scenario.spec.expect, session)
        if scenario.spec.expect.criteria:
            result.checks += await judge_criteria(options, scenario.spec.expect.criteria, session)
    except (PersonaError, TimeoutError) as exc:
        result.error = str(exc)
    finally:
        with contextlib.suppress(Exception):
            await call.hangup()
    result.seconds = time.monotonic() - started
    return result


async def run_on(target: Target, scenarios: list[Scenario], options: EvalOptions, run_id: str,
                 progress: Progress) -> list[RunResult]:  # fmt: skip
    """Every scenario ``options.runs`` times on ``target``, ``options.concurrency`` calls at a
    time; the results in scenario order, each told to ``progress`` as it comes."""
    admin = AdminClient(target)
    voice = Voice()
    if options.openai_api_key and not simulated(options):
        from openai import AsyncOpenAI

        voice = Voice(AsyncOpenAI(api_key=options.openai_api_key, base_url=options.openai_base_url),
                      voice=options.tts_voice)  # fmt: skip
    slots = asyncio.Semaphore(max(1, options.concurrency))

    async def one(tag: int, scenario: Scenario, run: int) -> RunResult:
        async with slots:
            try:
                result = await run_once(target, scenario, run, options, run_id, admin, voice, tag)
            except Exception as exc:  # one call's failure is its verdict, not the run's end
                result = RunResult(scenario.key, scenario.agent, run, _engine(target, options, scenario), None, None,
                                   error=f"the call failed: {exc!r}")  # fmt: skip
        if inspect.isawaitable(done := progress(result)):
            await done
        return result

    calls = [(scenario, run) for scenario in scenarios for run in range(1, options.runs + 1)]
    try:
        # A tag is a call's while it runs (the simulators' scripts are keyed by it); 16 bits of it
        # travel in the audio, far more than the calls running at once. Should telling the progress
        # fail, the task group cancels the other calls before the run ends.
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(i % 0xFFFF + 1, s, r)) for i, (s, r) in enumerate(calls)]
        return [task.result() for task in tasks]
    finally:
        await admin.close()


async def run_scenarios(options: EvalOptions, scenarios: list[Scenario], engines: list[Engine | None],
                        progress: Progress, run_id: str | None = None) -> list[RunResult]:  # fmt: skip
    """Run ``scenarios`` on each engine in ``engines`` (None: each agent's own), each on a
    platform of its own side by side, or all on the running platform."""
    run_id = run_id or time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
    needs_key = [s.key for s in scenarios if s.spec.caller.persona or s.spec.expect.criteria]
    if needs_key and not options.openai_api_key:
        raise LookupError("these scenarios need OPENAI_API_KEY (a persona caller or criteria judged by an LLM): "
                          + ", ".join(needs_key))  # fmt: skip
    if options.running:
        return await run_on(running_platform(options), scenarios, options, run_id, progress)
    with tempfile.TemporaryDirectory(prefix="dialtone-eval-") as tmp:

        async def on_engine(engine: Engine | None) -> list[RunResult]:
            workdir = Path(tmp) / (engine or "own")
            workdir.mkdir()
            async with own_platform(options, engine, workdir) as target:
                return await run_on(target, scenarios, options, run_id, progress)

        batches = await asyncio.gather(*(on_engine(e) for e in engines))
    return [r for batch in batches for r in batch]
