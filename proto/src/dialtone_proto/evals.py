"""Test runs started from the dashboard (``dialtone eval`` on the running platform, by a worker).

The admin API asks a test worker to start a run with a request on ``dt.v1.eval.start``
(:class:`EvalStart`); the worker that takes it answers :class:`EvalAccepted` (the run's id and how
many test calls it will place, or why it refused), then publishes :class:`EvalProgress` on
``dt.v1.eval.progress.<run_id>`` (core NATS) when the run starts, after each call and when it
ends. Progress is for watching; the run and each call's verdict are kept in PostgreSQL
(``eval_runs``, ``eval_results``), which is what the dashboard reads.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["EvalAccepted", "EvalCallResult", "EvalProgress", "EvalStart", "RunStatus"]

RunStatus = Literal["queued", "running", "passed", "failed", "error"]
_NAME = r"^[A-Za-z0-9_.-]{1,64}$"


class EvalStart(BaseModel):
    """Request of ``dt.v1.eval.start``: which scenarios, how many calls each."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    type: Literal["eval.start"] = "eval.start"
    agent: str | None = Field(default=None, pattern=_NAME)
    scenario: str | None = Field(default=None, pattern=_NAME)
    runs: int = Field(default=1, ge=1, le=20)
    requested_by: str | None = Field(default=None, max_length=64)


class EvalAccepted(BaseModel):
    """Reply of ``dt.v1.eval.start``: the run's id and size, or why it was refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    type: Literal["eval.accepted"] = "eval.accepted"
    accepted: bool
    run_id: str | None = None
    total: int = 0
    reason: str | None = None


class EvalCallResult(BaseModel):
    """One test call's verdict, as the run's progress carries it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scenario: str
    engine: str
    run: int
    call_sid: str | None = None
    passed: bool
    failures: list[str] = Field(default_factory=list)


class EvalProgress(BaseModel):
    """A run's state on ``dt.v1.eval.progress.<run_id>``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    type: Literal["eval.progress"] = "eval.progress"
    run_id: str = Field(pattern=_NAME)
    status: RunStatus
    total: int = Field(ge=0)
    done: int = Field(ge=0)
    passed: int = Field(ge=0)
    result: EvalCallResult | None = None
    error: str | None = None
