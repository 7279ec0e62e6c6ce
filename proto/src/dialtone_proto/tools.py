"""Messages of the tool-runner's ``nats.micro`` endpoints."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ToolSpec(BaseModel):
    """One tool as the model sees it (the Realtime ``tools`` entry) plus the runner's timeout."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str
    parameters: dict[str, Any]
    timeout_s: float = Field(gt=0)


class ToolCatalog(BaseModel):
    """Reply of ``dt.v1.tools.catalog``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    type: Literal["tools.catalog"] = "tools.catalog"
    tools: list[ToolSpec]


class ToolCallRequest(BaseModel):
    """Request of ``dt.v1.tools.call``. ``arguments`` is the model's raw JSON string, validated by
    the runner so a malformed one becomes an error for the model, not an exception in the bridge."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    type: Literal["tools.call"] = "tools.call"
    call_id: str
    tool_call_id: str
    name: str
    arguments: str
    agent: str
    from_number: str | None = None
    to_number: str | None = None
    variables: dict[str, str] = Field(default_factory=dict)


class ToolAction(BaseModel):
    """A call-control effect a tool asks the bridge to carry out (set_outcome, end_call, ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Literal["set_outcome", "end_call", "transfer_call", "handoff"]
    value: str | None = None
    detail: str | None = None


class ToolCallReply(BaseModel):
    """Reply of ``dt.v1.tools.call``. ``output`` is what the model receives as
    ``function_call_output``: the tool's JSON result, or ``{"error": ...}`` when ``ok`` is false."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    type: Literal["tools.result"] = "tools.result"
    ok: bool
    output: Any
    error: str | None = None
    actions: list[ToolAction] = Field(default_factory=list)
    duration_ms: float = 0.0
    runner_id: str | None = None
