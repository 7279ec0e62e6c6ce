"""The bridge instance: claims calls from the queue group and runs one ``CallSession`` each."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from dialtone_proto import CallAnswer, CallOffer, subjects
from dialtone_proto.live import LiveCall
from nats.aio.msg import Msg
from pydantic import ValidationError

from dialtone_bridge import metrics as m
from dialtone_bridge.agents import AgentError
from dialtone_bridge.session import BridgeContext, CallSession

log = logging.getLogger("dialtone.bridge")


class Bridge:
    def __init__(self, ctx: BridgeContext) -> None:
        self.ctx = ctx
        self.sessions: dict[str, CallSession] = {}
        self._started_at: dict[str, datetime] = {}
        self._tasks: set[asyncio.Task] = set()
        self._sub = None
        self._heartbeat: asyncio.Task | None = None
        self.draining = False

    async def start(self) -> None:
        self._sub = await self.ctx.nc.subscribe(subjects.CALL_OFFER, queue=subjects.BRIDGE_QUEUE, cb=self._on_offer)
        self._heartbeat = asyncio.create_task(self._heartbeats(), name="heartbeats")
        log.info("bridge %s claiming calls on %s", self.ctx.bridge_id, subjects.CALL_OFFER)

    async def _answer(self, msg: Msg, call_id: str, accepted: bool, agent: str | None = None, reason: str | None = None) -> None:
        answer = CallAnswer(call_id=call_id, accepted=accepted, bridge_id=self.ctx.bridge_id, agent=agent, reason=reason)
        m.OFFERS.labels("accepted" if accepted else (reason or "refused").split(":")[0]).inc()
        with contextlib.suppress(Exception):
            await msg.respond(answer.model_dump_json().encode())

    async def _on_offer(self, msg: Msg) -> None:
        try:
            offer = CallOffer.model_validate_json(msg.data)
        except ValidationError as exc:
            log.warning("malformed call offer refused: %s", exc.errors()[:2])
            await self._answer(msg, "invalid", False, reason="malformed offer")
            return
        if offer.call_id in self.sessions:  # the gateway retried an offer we already hold
            await self._answer(msg, offer.call_id, True, self.sessions[offer.call_id].conversation.agent.name)
            return
        if self.draining or len(self.sessions) >= self.ctx.settings.max_calls:
            await self._answer(msg, offer.call_id, False, reason="draining" if self.draining else "full")
            return
        try:
            agent = self.ctx.agents.choose(name=offer.agent, to_number=offer.to_number)
        except AgentError as exc:
            log.error("call %s refused: %s", offer.call_id, exc)
            await self._answer(msg, offer.call_id, False, reason=f"no agent: {exc}")
            return
        session = CallSession(self.ctx, offer, agent)
        await session.attach()
        self.sessions[offer.call_id] = session
        self._started_at[offer.call_id] = datetime.now(UTC)
        await self._answer(msg, offer.call_id, True, agent.name)
        session.log.info("claimed call from %s to %s (agent %s)", offer.from_number, offer.to_number, agent.name)
        task = asyncio.create_task(self._run(session), name=f"call-{offer.call_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, session: CallSession) -> None:
        try:
            await session.run()
        except Exception:
            session.log.exception("call failed")
        finally:
            self.sessions.pop(session.call_id, None)
            self._started_at.pop(session.call_id, None)

    async def _heartbeats(self) -> None:
        """Announce live calls for the admin API's live view."""
        while True:
            await asyncio.sleep(self.ctx.settings.heartbeat_s)
            for call_id, session in list(self.sessions.items()):
                o = session.offer
                beat = LiveCall(
                    call_id=call_id, agent=session.conversation.agent.name,
                    started_at=self._started_at.get(call_id, datetime.now(UTC)), bridge_id=self.ctx.bridge_id,
                    from_number=o.from_number, to_number=o.to_number, direction=o.direction,
                    state=session.conversation.state if not session.ended.is_set() else "ending",
                )
                with contextlib.suppress(Exception):
                    await self.ctx.nc.publish(subjects.live(call_id), beat.model_dump_json().encode())

    async def drain(self, timeout: float = 30.0) -> None:
        """Stop claiming; let calls in progress finish for up to ``timeout``; end the rest."""
        self.draining = True
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if self._tasks:
            log.info("draining %d calls", len(self._tasks))
            _, pending = await asyncio.wait(list(self._tasks), timeout=timeout)
            for session in list(self.sessions.values()):
                session.end("bridge_shutdown")
            if pending:
                await asyncio.wait(pending, timeout=10)
        if self._heartbeat:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
