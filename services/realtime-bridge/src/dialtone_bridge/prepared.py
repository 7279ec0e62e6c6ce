"""Model sessions opened at a call's voice webhook, before Twilio's stream exists.

Opening a model session (a socket, then ``session.update`` or ``session.start``) takes about 1.5 s
against the real API; Twilio needs about 0.5 s to set up the media stream after the voice webhook.
Done one after the other, the caller hears 2 s of silence before the greeting. So the gateway tells
one bridge (``dt.v1.calls.prepare``, queue group) at the webhook; that bridge marks the call's record
``prepared_by`` itself and starts opening the session for the call's agent. The stream's gateway
offers the call to that bridge first (``dt.v1.calls.offer.<bridge>``), whose call then starts on
the session already opening.

Nothing depends on it. A prepared session whose call does not come within ``PREPARE_TTL_S`` (the
stream never started, or the call went to another bridge) is closed, and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from dialtone_common.callbook import CallBook, CallBookUnavailable
from dialtone_common.logs import CallLog
from dialtone_proto import CallPrepare, subjects
from pydantic import ValidationError

from dialtone_bridge import metrics as m
from dialtone_bridge.agents import Agent, AgentError
from dialtone_bridge.context import BridgeContext
from dialtone_bridge.engine import ModelConnection
from dialtone_bridge.engines import model_connection, session_spec

log = logging.getLogger("dialtone.bridge.prepared")


@dataclass
class Prepared:
    agent: Agent
    opening: asyncio.Task[ModelConnection]
    since: float


class PreparedSessions:
    """This bridge's prepared sessions, by call.

    Args:
        ctx: the bridge's shared context.
        calls: the call records (where ``prepared_by`` is written).
        can_take: whether the bridge would take one more call now (not draining, not full).
    """

    def __init__(self, ctx: BridgeContext, calls: CallBook, can_take: Callable[[], bool]) -> None:
        self.ctx, self.calls, self._can_take = ctx, calls, can_take
        self._items: dict[str, Prepared] = {}
        self._tasks: set[asyncio.Task] = set()

    def __len__(self) -> int:
        return len(self._items)

    async def on_prepare(self, data: bytes) -> None:
        """A call's voice webhook arrived: open its session here if this bridge would take it."""
        try:
            prepare = CallPrepare.model_validate_json(data)
        except ValidationError:
            return
        call_id = prepare.call_id
        if call_id in self._items or not self._can_take():
            return
        try:
            subjects.check_call_id(self.ctx.bridge_id)  # the gateway must be able to name us
            agent = self.ctx.agents.choose(name=prepare.agent, to_number=prepare.to_number)
        except (subjects.InvalidCallId, AgentError) as exc:
            log.info("call %s not prepared: %s", call_id, exc)
            return
        # The session is held here before the first await: the stream may start, and its offer
        # reach this bridge (by name or through the queue group), while the record is written;
        # that offer takes this session, not a second one.
        connection = model_connection(self.ctx, agent, CallLog(log, call_id=call_id))
        opening = asyncio.create_task(self._open(connection, agent), name=f"prepare-{call_id}")
        self._items[call_id] = Prepared(agent, opening, time.monotonic())
        self._spawn(self._expire(call_id, opening))
        try:
            if await self.calls.prepared(call_id, self.ctx.bridge_id) is None:
                log.info("call %s: its stream started first; the session waits for an offer", call_id)
        except CallBookUnavailable as exc:
            log.info("call %s: its record could not name this bridge: %s", call_id, exc)
        # Unmarked, no offer names this bridge, but one through the queue group may still come here
        # (always, with one bridge); if none does, the session expires like any unused one.

    async def _open(self, connection: ModelConnection, agent: Agent) -> ModelConnection:
        await connection.open(await session_spec(self.ctx, agent))
        return connection

    def take(self, call_id: str, agent: Agent) -> asyncio.Task[ModelConnection] | None:
        """The session prepared for ``call_id``, if it was for ``agent``; else it is closed."""
        item = self._items.pop(call_id, None)
        if item is None:
            return None
        if item.agent.name != agent.name:
            self._discard(item, "unused")
            return None
        return item.opening

    async def _expire(self, call_id: str, opening: asyncio.Task[ModelConnection]) -> None:
        await asyncio.sleep(self.ctx.settings.prepare_ttl_s)
        item = self._items.get(call_id)
        if item is not None and item.opening is opening:
            del self._items[call_id]
            log.info("call %s: prepared session unused after %.0f s: closed", call_id, self.ctx.settings.prepare_ttl_s)
            self._discard(item, "expired")

    def _discard(self, item: Prepared, result: str) -> None:
        m.PREPARED.labels(result).inc()
        self._spawn(_close(item.opening))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Close every prepared session (the bridge stops or drains)."""
        for item in list(self._items.values()):
            self._discard(item, "unused")
        self._items.clear()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        for task in list(self._tasks):
            task.cancel()


async def _close(opening: asyncio.Task[ModelConnection]) -> None:
    """Close a prepared session, waiting for it to finish opening first (bounded)."""
    try:
        connection = await asyncio.wait_for(asyncio.shield(opening), 15)
    except Exception:
        opening.cancel()
        return
    with contextlib.suppress(Exception):
        await connection.close()
