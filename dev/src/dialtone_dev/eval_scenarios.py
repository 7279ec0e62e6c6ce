"""Scenario files: one test call of an agent, ``agents/<name>/scenarios/*.yaml``.

YAML rather than TOML: a scenario is mostly lists of steps and nested expectations (TOML's arrays
of tables read badly at that depth), callers' lines and personas are prose that YAML keeps
unquoted, and PyYAML's composer gives every value its line, so an error names the line.

The file's shape is the pydantic model :class:`ScenarioFile`; its JSON Schema is published at
``docs/scenario.schema.json`` (a test keeps the two equal) for editors and CI linters. Loading
checks the file against the model and reports the first problems as ``file:line: field: message``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "Expectations", "ScenarioError", "ScenarioFile", "Step", "load_scenario", "load_scenarios",
    "scenario_schema",
]

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "docs" / "scenario.schema.json"
MAX_FILE_BYTES = 256 * 1024  # a scenario is a page of YAML; bound what is parsed


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Step(_Strict):
    """One thing the scripted caller does. Exactly one action per step.

    Before each action the caller lets the agent finish: it waits for the agent's reply to its
    last action (``wait_s`` at most) and for the reply to end."""

    say: str | None = Field(default=None, min_length=1, max_length=2000, description="Speak this line.")
    silence: float | None = Field(default=None, gt=0, le=600, description="Say nothing for this many seconds.")
    press: str | None = Field(
        default=None, pattern=r"^[0-9*#]{1,32}$", description="Press these keys (DTMF), one every 200 ms."
    )
    interrupt: str | None = Field(
        default=None, min_length=1, max_length=2000,
        description="Speak this line over the agent once it has spoken for `after_ms`.",
    )  # fmt: skip
    after_ms: int = Field(default=500, ge=0, le=60_000, description="With `interrupt`: agent speech heard first.")
    hangup: Literal[True] | None = Field(default=None, description="Hang up.")
    wait_s: float = Field(default=10.0, gt=0, le=120, description="Longest wait for the agent's reply first.")

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        actions = [n for n in ("say", "silence", "press", "interrupt", "hangup") if getattr(self, n) is not None]
        if len(actions) != 1:
            raise ValueError("a step needs exactly one of say, silence, press, interrupt, hangup"
                             + (f" (has {', '.join(actions)})" if actions else ""))  # fmt: skip
        return self

    @property
    def action(self) -> str:
        return next(n for n in ("say", "silence", "press", "interrupt", "hangup") if getattr(self, n) is not None)


class Persona(_Strict):
    """A caller played by an LLM, turn by turn (needs ``OPENAI_API_KEY``)."""

    goal: str = Field(min_length=1, max_length=2000, description="What the caller wants from the call.")
    manner: str = Field(default="polite and brief", max_length=1000, description="How the caller talks.")
    max_turns: int = Field(default=6, ge=1, le=30, description="Lines the caller says at most.")
    model: str | None = Field(default=None, description="Text model playing the caller (default EVAL_MODEL).")


class Caller(_Strict):
    number: str = Field(default="+15005550001", pattern=r"^\+[1-9][0-9]{6,14}$", description="Caller id (E.164).")
    variables: dict[str, str] = Field(default_factory=dict, description="The call's variables (`v_<name>`).")
    script: list[Step] | None = Field(default=None, min_length=1, description="Lines, silences, keys, hang-up.")
    persona: Persona | None = None
    end_wait_s: float = Field(
        default=5.0, ge=0, le=600,
        description="After the last step, wait this long for the agent to end the call, then hang up.",
    )  # fmt: skip

    @model_validator(mode="after")
    def _script_or_persona(self) -> Caller:
        if (self.script is None) == (self.persona is None):
            raise ValueError("a caller has either a script or a persona")
        if any(k.startswith("dialtone_") for k in self.variables):
            raise ValueError("variables named dialtone_* are the runner's own")
        return self


class Mock(_Strict):
    """A tool's fixed answer: its result, or an error the model reads as ``{"error": ...}``."""

    result: Any = None
    error: str | None = Field(default=None, min_length=1, max_length=2000)

    @model_validator(mode="after")
    def _one(self) -> Mock:
        if ("result" in self.model_fields_set) == (self.error is not None):
            raise ValueError("a mock has either a result or an error")
        return self


class ToolExpectation(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    arguments: dict[str, Any] = Field(default_factory=dict, description="A subset of the call's arguments.")


class Expectations(_Strict):
    tools_called: list[ToolExpectation | str] = Field(default_factory=list)
    tools_not_called: list[str] = Field(default_factory=list)
    outcome: str | None = Field(default=None, description="The call's outcome (set_outcome).")
    transferred: bool | None = Field(default=None, description="The call was transferred (transfer_call).")
    ended_by_agent: bool | None = Field(default=None, description="The agent, not the caller, ended the call.")
    said: list[str] = Field(default_factory=list, description="Regexes the agent's lines must match (any line).")
    never_said: list[str] = Field(default_factory=list, description="Regexes no agent line may match.")
    criteria: list[str] = Field(default_factory=list, description="Plain-words criteria judged by an LLM.")
    turn_latency_p95_ms: float | None = Field(default=None, gt=0, description="p95 of the turns' latency (sent).")
    max_duration_s: float | None = Field(default=None, gt=0)
    handed_off_to: str | None = Field(default=None, description="The call was handed off to this agent.")

    @field_validator("said", "never_said")
    @classmethod
    def _regexes(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
        return patterns


class ModelTurn(_Strict):
    """What the offline simulated model says for one caller turn (the simulators' scenario turn)."""

    caller: str | None = Field(default=None, description="The transcript the simulator reports.")
    agent: str = Field(min_length=1)
    tools: list[ToolExpectation] = Field(default_factory=list)
    preamble: str | None = None


class SimulatedModel(_Strict):
    turns: list[ModelTurn] = Field(default_factory=list)
    fallback_agent: str = "Is there anything else I can help you with?"


class ScenarioFile(_Strict):
    """One scenario file (``agents/<agent>/scenarios/<name>.yaml``)."""

    model_config = ConfigDict(extra="forbid", title="Dialtone scenario")

    name: str | None = Field(default=None, max_length=120, description="Default: the file's name.")
    description: str | None = None
    caller: Caller
    mocks: dict[str, Mock] = Field(default_factory=dict, description="Tool name -> fixed result or error.")
    expect: Expectations = Field(default_factory=Expectations)
    pass_rate: float | None = Field(default=None, ge=0, le=1, description="Least share of runs passing.")
    model: SimulatedModel | None = Field(
        default=None,
        description="Offline only: what the simulated model says (no OPENAI_API_KEY). The real model ignores it.",
    )


def scenario_schema() -> dict[str, Any]:
    """The published JSON Schema of a scenario file."""
    schema = ScenarioFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://github.com/dialtone/dialtone/docs/scenario.schema.json"
    return schema


class ScenarioError(Exception):
    """A scenario file that cannot be used; ``problems`` are ``file:line: field: message``."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.path, self.problems = path, problems


@dataclass(frozen=True)
class Scenario:
    """A loaded scenario of an agent."""

    agent: str
    name: str
    path: Path
    spec: ScenarioFile

    @property
    def key(self) -> str:
        return f"{self.agent}/{self.name}"


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int:
    """The 1-based line of the value at ``loc`` (or of its nearest existing parent)."""
    line = node.start_mark.line + 1 if node is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if getattr(k, "value", None) == part), None)
            if found is None:
                break
            node = found[1]
            line = found[0].start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            continue  # pydantic's union branch names (e.g. "ToolExpectation") are not in the file
    return line


def _branch(part: int | str) -> bool:
    """A union branch pydantic names in an error's location (``ToolExpectation``, ``str``)."""
    return isinstance(part, str) and (part[:1].isupper() or part in {"str", "int", "float", "bool"})


def _errors(exc: ValidationError) -> list[tuple[tuple[int | str, ...], str]]:
    """Each error's location without union branches and its message; of a union's failed
    branches, the model's (a mapping the author wrote), not the plain string's."""
    out, seen = [], set()
    errors = exc.errors(include_url=False)
    for error in errors:
        loc = tuple(error["loc"])
        if any(p in {"str", "int", "float", "bool"} for p in loc) and len(errors) > 1:
            continue
        clean = tuple(p for p in loc if not _branch(p))
        message = error["msg"].removeprefix("Value error, ")
        if (clean, message) not in seen:
            seen.add((clean, message))
            out.append((clean, message))
    return out


def _field(loc: tuple[int | str, ...], data: Any) -> str:
    """``expect.tools_called[0].name``, keeping only the parts that are in the file."""
    out = ""
    for part in loc:
        if isinstance(part, int) and isinstance(data, list):
            out += f"[{part}]"
            data = data[part] if part < len(data) else None
        elif isinstance(data, dict) and part in data:
            out += f".{part}" if out else str(part)
            data = data[part]
        elif isinstance(data, dict):
            out += f".{part}" if out else str(part)  # a missing required field
            data = None
    return out or "(file)"


def load_scenario(path: Path, agent: str) -> Scenario:
    """Read and validate one scenario file.

    Raises:
        ScenarioError: unreadable, not YAML, or not a scenario (every problem with its line).
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ScenarioError(path, [f"{path}: cannot read: {exc.strerror}"]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ScenarioError(path, [f"{path}: {len(raw)} bytes, over the {MAX_FILE_BYTES}-byte limit"])
    text = raw.decode("utf-8", errors="replace")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise ScenarioError(path, [f"{path}:{line}: (file): not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    if not isinstance(data, dict):
        raise ScenarioError(path, [f"{path}:1: (file): a scenario is a mapping (name, caller, expect, ...)"])
    try:
        spec = ScenarioFile.model_validate(data)
    except ValidationError as exc:
        problems = [f"{path}:{_line_of(node, loc)}: {_field(loc, data)}: {message}" for loc, message in _errors(exc)]
        raise ScenarioError(path, problems) from None
    return Scenario(agent=agent, name=spec.name or path.stem, path=path, spec=spec)


def load_scenarios(agents_dir: Path, agent: str | None = None) -> tuple[list[Scenario], list[ScenarioError]]:
    """Every scenario of every agent (or of ``agent``), and the files refused."""
    found: list[Scenario] = []
    refused: list[ScenarioError] = []
    folders = sorted(p for p in agents_dir.iterdir() if p.is_dir()) if agents_dir.is_dir() else []
    for folder in folders:
        if agent is not None and folder.name != agent:
            continue
        for path in sorted((folder / "scenarios").glob("*.yaml")) + sorted((folder / "scenarios").glob("*.yml")):
            try:
                found.append(load_scenario(path, folder.name))
            except ScenarioError as exc:
                refused.append(exc)
    return found, refused
