"""Agent definitions: one folder per agent under ``AGENTS_DIR``.

    agents/<name>/agent.toml   voice, language, numbers, tools, greeting, limits, engine, ...
    agents/<name>/system.md    the instructions (the seed's system prompt)

``engine`` chooses the voice engine that answers for the agent: ``"realtime"`` (OpenAI Realtime,
the default) or ``"live"`` (OpenAI GPT-Live: ``live_model``, and the backend its tools are
delegated to, ``backend_model`` with ``backend_instructions``; see ``live_engine.py``).

The dialled number chooses the agent (``numbers``); an agent named in the call's parameters wins;
otherwise the agent with ``default = true`` (or the only one) answers.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dialtone_common.analysis_config import AnalysisConfigError, parse_analysis
from dialtone_common.redact_config import RedactConfigError, check_kinds
from dialtone_common.webhook_config import WebhookConfigError, agent_endpoints

# How long a pause ends the caller's turn, by language. Speakers of some languages pause longer
# inside a sentence; a shorter window there makes the agent interrupt them.
SILENCE_BY_LANGUAGE_MS: dict[str, int] = {
    "en": 500, "es": 600, "pt": 600, "fr": 600, "it": 600, "de": 600, "nl": 550,
    "ja": 700, "zh": 700, "ko": 650, "hi": 650, "ar": 650,
}


ENGINES = ("realtime", "live")
DEFAULT_LIVE_MODEL = "gpt-live-1.1"
DEFAULT_BACKEND_MODEL = "gpt-5.4-mini"


class AgentError(ValueError):
    """An agent definition that cannot be used."""


@dataclass(frozen=True)
class Limits:
    idle_prompt_s: float = 8.0
    idle_prompts: int = 2
    max_duration_s: float = 1800.0


@dataclass(frozen=True)
class Agent:
    name: str
    instructions: str
    voice: str = "marin"
    language: str = "en"
    numbers: tuple[str, ...] = ()
    tools: tuple[str, ...] | Literal["*"] = "*"
    greeting: str | None = None
    turn_detection: dict[str, Any] = field(default_factory=dict)
    silence_by_language_ms: dict[str, int] = field(default_factory=dict)
    limits: Limits = Limits()
    transfer_number: str | None = None
    voicemail: Literal["leave_message", "hangup"] = "hangup"
    voicemail_message: str | None = None
    handoffs: tuple[str, ...] = ()
    default: bool = False
    record: bool = True  # the call is recorded (both sides); false: never
    idle_prompt: str = "Are you still there?"
    goodbye: str = "Thank you for calling. Goodbye!"
    filler: str = "One moment, I'm still checking that for you."
    # Said when another bridge takes the call over after this one's bridge was lost.
    resumed: str = "Sorry, the line dropped for a moment. Please go on."
    engine: Literal["realtime", "live"] = "realtime"
    # GPT-Live only: the live model, and the Responses model its tools are delegated to, with that
    # model's own instructions (unset: the agent's instructions, system.md).
    live_model: str = DEFAULT_LIVE_MODEL
    backend_model: str = DEFAULT_BACKEND_MODEL
    backend_instructions: str | None = None

    @property
    def silence_duration_ms(self) -> int:
        lang = self.language.split("-")[0].lower()
        return int(
            self.turn_detection.get("silence_duration_ms")
            or self.silence_by_language_ms.get(self.language)
            or self.silence_by_language_ms.get(lang)
            or SILENCE_BY_LANGUAGE_MS.get(lang, 500)
        )

    def turn_detection_config(self) -> dict[str, Any]:
        """The Realtime ``turn_detection`` object for this agent."""
        td = self.turn_detection
        kind = td.get("type", "server_vad")
        if kind == "semantic_vad":
            return {
                "type": "semantic_vad",
                "eagerness": td.get("eagerness", "auto"),
                "create_response": True,
                "interrupt_response": True,
            }
        return {
            "type": "server_vad",
            "threshold": float(td.get("threshold", 0.5)),
            "prefix_padding_ms": int(td.get("prefix_padding_ms", 300)),
            "silence_duration_ms": self.silence_duration_ms,
            "create_response": True,
            "interrupt_response": True,
        }


def load_agent(folder: Path) -> Agent:
    """Read one agent folder."""
    config_path = folder / "agent.toml"
    try:
        raw = tomllib.loads(config_path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise AgentError(f"{config_path}: {exc}") from exc
    instructions_file = folder / raw.pop("instructions_file", "system.md")
    try:
        instructions = instructions_file.read_text().strip()
    except OSError as exc:
        raise AgentError(f"agent {folder.name}: cannot read instructions {instructions_file}: {exc}") from exc
    limits_raw = raw.pop("limits", {})
    unknown_limits = set(limits_raw) - set(Limits.__dataclass_fields__)
    if unknown_limits:
        raise AgentError(f"agent {folder.name}: unknown limits {sorted(unknown_limits)}")
    limits = Limits(**limits_raw)
    tools = raw.pop("tools", "*")
    # [[webhooks]]: the transcript-writer sends them (dialtone_common.webhook_config); checked here
    # too, so a wrong one stops the bridge that would take the agent's calls, not only the writer.
    if "webhooks" in raw:
        try:
            agent_endpoints(folder.name, raw.pop("webhooks"), env=None)
        except WebhookConfigError as exc:
            raise AgentError(str(exc)) from exc
    # [analysis]: the transcript-writer's analysis worker runs it (dialtone_common.analysis_config);
    # checked here too, so a schema strict mode would refuse stops the bridge at start-up.
    if "analysis" in raw:
        try:
            parse_analysis(folder.name, raw.pop("analysis"), str(config_path))
        except AnalysisConfigError as exc:
            raise AgentError(str(exc)) from exc
    # redact: the transcript-writer keeps these kinds out of storage (dialtone_common.redact_config).
    if "redact" in raw:
        try:
            check_kinds(raw.pop("redact"), str(config_path))
        except RedactConfigError as exc:
            raise AgentError(str(exc)) from exc
    known = set(Agent.__dataclass_fields__) - {"name", "instructions", "limits", "tools"}
    unknown = set(raw) - known
    if unknown:
        raise AgentError(f"agent {folder.name}: unknown settings {sorted(unknown)}")
    if raw.get("engine", "realtime") not in ENGINES:
        raise AgentError(f"agent {folder.name}: engine must be one of {list(ENGINES)}, not {raw['engine']!r}")
    for key in ("numbers", "handoffs"):
        if key in raw:
            raw[key] = tuple(raw[key])
    return Agent(
        name=folder.name,
        instructions=instructions,
        limits=limits,
        tools="*" if tools == "*" else tuple(tools),
        **raw,
    )


class AgentBook:
    """All agents, and which one answers a call."""

    def __init__(self, agents: dict[str, Agent]) -> None:
        if not agents:
            raise AgentError("no agents defined")
        self.agents = agents
        self._by_number = {n: a for a in agents.values() for n in a.numbers}
        defaults = [a for a in agents.values() if a.default]
        if len(defaults) > 1:
            raise AgentError(f"more than one default agent: {[a.name for a in defaults]}")
        self.default = defaults[0] if defaults else (next(iter(agents.values())) if len(agents) == 1 else None)

    @classmethod
    def load(cls, directory: Path) -> AgentBook:
        folders = sorted(p for p in directory.iterdir() if (p / "agent.toml").exists()) if directory.is_dir() else []
        if not folders:
            raise AgentError(f"no agents in {directory} (expected {directory}/<name>/agent.toml)")
        return cls({f.name: load_agent(f) for f in folders})

    def choose(self, *, name: str | None, to_number: str | None) -> Agent:
        if name and name in self.agents:
            return self.agents[name]
        if to_number and to_number in self._by_number:
            return self._by_number[to_number]
        if self.default is None:
            raise AgentError(f"no agent for number {to_number} and no default agent")
        return self.default
