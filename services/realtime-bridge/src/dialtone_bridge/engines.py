"""Which engine serves an agent: the one place a model connection is made."""

from __future__ import annotations

import logging

from dialtone_bridge.agents import Agent
from dialtone_bridge.context import BridgeContext
from dialtone_bridge.engine import ModelConnection, SessionSpec
from dialtone_bridge.live_engine import LiveConnection
from dialtone_bridge.realtime_engine import RealtimeConnection


def model_connection(ctx: BridgeContext, agent: Agent, log: logging.LoggerAdapter) -> ModelConnection:
    """A new (unopened) connection to the agent's engine: GPT-Live (``engine = "live"``) or
    OpenAI Realtime."""
    s = ctx.settings
    key = s.openai_api_key.get_secret_value() if s.openai_api_key else None
    if agent.engine == "live":
        return LiveConnection(s.openai_live_url, agent.live_model, key, log)
    return RealtimeConnection(s.openai_realtime_url, s.openai_realtime_model, s.transcription_model, key, log,
                              warm=ctx.warm)


async def session_spec(ctx: BridgeContext, agent: Agent, voice: str | None = None) -> SessionSpec:
    """What the model is to be for ``agent``: its instructions, the tools it names that the
    tool-runners offer (all of them for ``"*"``), and the voice (the call's, once heard)."""
    catalog = await ctx.tools.catalog()
    names = list(catalog) if agent.tools == "*" else [n for n in agent.tools if n in catalog]
    return SessionSpec(agent, [catalog[n] for n in names], voice or agent.voice)
