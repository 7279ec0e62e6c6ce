"""Response shapes of the admin API (docs/CONTRACTS.md), declared for validation and OpenAPI."""

from __future__ import annotations

from typing import Any

from dialtone_common.session_view import (  # noqa: F401 - shared with the webhooks' payload
    AgentChange,
    Cost,
    CostKinds,
    Latency,
    SessionDetail,
    SessionSummary,
    StatusEntry,
    TokenKinds,
    ToolCallEntry,
    TranscriptEntry,
    TurnEntry,
    Usage,
)
from pydantic import BaseModel


class SessionPage(BaseModel):
    items: list[SessionSummary]
    next_cursor: str | None


class SessionCount(BaseModel):
    count: int
    exact: bool  # False: more than 10,000 match, and count is the planner's estimate


class Facets(BaseModel):
    agent: list[str]
    status: list[str]
    direction: list[str]
    outcome: list[str]


class LivePage(BaseModel):
    items: list[dict[str, Any]]
