"""The bridge instance: claims calls from the queue group and runs one ``CallSession`` each.

An offer is taken only when the call's record (written by the gateway from Twilio's signed webhook)
confirms that the offering stream holds the call under that stream key and epoch; the caller's
details come from that record. Every half second the bridge renews its lease on each call with a
heartbeat frame; a gateway that stops hearing them re-offers the call, and the bridge that takes a
re-offered call (epoch > 0) restores its conversation from the call's events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from dialtone_common.callbook import CallBook, CallBookUnavailable
from dialtone_proto import CallAnswer, CallOffer, subjects
from dialtone_proto.live import LiveCall
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from dialtone_bridge import metrics as m
from dialtone_bridge import recovery
from dialtone_bridge.agents import AgentError
from dialtone_bridge.context import BridgeContext
from dialtone_bridge.phase import REPLACED
from dialtone_bridge.prepared import PreparedSessions
from dialtone_bridge.session import CallSession

log = logging.getLogger("dialtone.bridge")


class Bridge:
    def __init__(self, ctx: BridgeContext, calls: CallBook) -> None:
        self.ctx, self.calls = ctx, calls
        self.sessions: dict[str, CallSession] = {}
        self._started_at: dict[str, datetime] = {}
        self._tasks: set[asyncio.Task] = set()
        self._sub: Subscription | None = None
        self._subs: list[Subscription] = []  # the direct offers and the prepares
        self.prepared = PreparedSessions(ctx, calls, self._can_take)
        self._heartbeat: asyncio.Task | None = None
        self._leases: asyncio.Task | None = None
        self._offers: set[asyncio.Task] = set()
        self._claiming: set[str] = set()  # calls whose offer is being taken now
        self.draining = False

    async def start(self) -> None:
        self._sub = await self.ctx.nc.subscribe(subjects.CALL_OFFER, queue=subjects.BRIDGE_QUEUE, cb=self._on_offer)
        with contextlib.suppress(subjects.InvalidCallId):  # an id no subject can carry: offers by queue only
            self._subs.append(await self.ctx.nc.subscribe(subjects.bridge_offer(self.ctx.bridge_id), cb=self._on_offer))
            self._subs.append(
                await self.ctx.nc.subscribe(subjects.CALL_PREPARE, queue=subjects.BRIDGE_QUEUE, cb=self._on_prepare)
            )
        # Every bridge hears the gateways' second try of an offer the queue group left unanswered.
        self._subs.append(await self.ctx.nc.subscribe(subjects.CALL_OFFER_ANY, cb=self._on_offer))
        m.READY.set_function(self._ready)
        m.start_at_zero(sorted(self.ctx.agents.agents))
        self._heartbeat = asyncio.create_task(self._heartbeats(), name="heartbeats")
        self._leases = asyncio.create_task(self._renew_leases(), name="leases")
        log.info("bridge %s claiming calls on %s", self.ctx.bridge_id, subjects.CALL_OFFER)

    def _ready(self) -> float:
        """1 while an offer would be taken: the ``dialtone_bridge_ready`` gauge, read at each scrape."""
        taking = self.ctx.nc.is_connected and not self.draining and len(self.sessions) < self.ctx.settings.max_calls
        return 1.0 if taking else 0.0

    def _can_take(self) -> bool:
        """Room for one more call, counting the sessions prepared for calls still to come."""
        return self._ready() == 1.0 and len(self.sessions) + len(self.prepared) < self.ctx.settings.max_calls

    async def _on_prepare(self, msg: Msg) -> None:
        task = asyncio.create_task(self.prepared.on_prepare(msg.data), name="prepare")
        self._offers.add(task)
        task.add_done_callback(self._offers.discard)

    async def _answer(self, msg: Msg, call_id: str, accepted: bool, agent: str | None = None, reason: str | None = None) -> None:
        answer = CallAnswer(call_id=call_id, accepted=accepted, bridge_id=self.ctx.bridge_id, agent=agent, reason=reason)
        m.OFFERS.labels("accepted" if accepted else (reason or "refused").split(":")[0]).inc()
        if not accepted and msg.subject == subjects.CALL_OFFER_ANY:
            return  # an offer to every bridge: the first answer is the gateway's, so only the taker speaks
        with contextlib.suppress(Exception):
            await msg.respond(answer.model_dump_json().encode())

    async def _on_offer(self, msg: Msg) -> None:
        """Offers are handled concurrently: taking a call over reads its events, and a bridge that
        died with many calls must not make the others wait in one queue."""
        task = asyncio.create_task(self._take_offer(msg), name="offer")
        self._offers.add(task)
        task.add_done_callback(self._offers.discard)

    async def _take_offer(self, msg: Msg) -> None:
        try:
            offer = CallOffer.model_validate_json(msg.data)
        except ValidationError as exc:
            log.warning("malformed call offer refused: %s", exc.errors()[:2])
            await self._answer(msg, "invalid", False, reason="malformed offer")
            return
        call_id = offer.call_id
        held = self.sessions.get(call_id)
        if held is not None and held.offer.stream_key == offer.stream_key:  # the gateway retried
            await self._answer(msg, call_id, True, held.conversation.agent.name)
            return
        if call_id in self._claiming:
            await self._answer(msg, call_id, False, reason="busy: taking this call already")
            return
        if self.draining or len(self.sessions) >= self.ctx.settings.max_calls:
            await self._answer(msg, call_id, False, reason="draining" if self.draining else "full")
            return
        self._claiming.add(call_id)
        try:
            await self._claim(msg, offer, held)
        finally:
            self._claiming.discard(call_id)

    async def _claim(self, msg: Msg, offer: CallOffer, held: CallSession | None) -> None:
        call_id, bridge_id = offer.call_id, self.ctx.bridge_id
        # The record must say this offer's stream holds the call, and give it to this bridge alone:
        # a repeated offer may reach two bridges, and only one may serve the call.
        try:
            record = await self.calls.assign(call_id, offer.stream_key, offer.epoch, bridge_id)
        except CallBookUnavailable as exc:
            await self._answer(msg, call_id, False, reason=f"unavailable: call record: {exc}")
            return
        if record is None:
            log.warning("offer of call %s refused: its record names another stream, epoch or bridge", call_id)
            await self._answer(msg, call_id, False, reason="unconfirmed: not the stream holding the call")
            return
        if held is not None:  # our own earlier session of this call was fenced off: it is over
            held.end(REPLACED)
            self.sessions.pop(call_id, None)
        offer = offer.with_record(record)
        restored = None
        if offer.epoch > 0:
            try:
                restored = await recovery.load(self.ctx.js, call_id)
            except Exception as exc:  # JetStream trouble: the gateway retries, or apologises
                log.error("call %s: could not read its events: %s", call_id, exc)
                await self._answer(msg, call_id, False, reason="unavailable: events")
                return
            if restored is not None and restored.ended:
                await self._answer(msg, call_id, False, reason="ended: the call is over")
                return
        try:
            agent = self.ctx.agents.choose(name=restored.agent if restored else offer.agent, to_number=offer.to_number)
        except AgentError as exc:
            log.error("call %s refused: %s", call_id, exc)
            await self._answer(msg, call_id, False, reason=f"no agent: {exc}")
            return
        if not agent.record:
            try:  # before the call starts, so the recorder drops its first words too
                await self.calls.do_not_record(call_id, offer.stream_key, offer.epoch, bridge_id)
            except CallBookUnavailable as exc:
                await self._answer(msg, call_id, False, reason=f"unavailable: call record: {exc}")
                return
        preopened = self.prepared.take(call_id, agent) if restored is None else None
        session = CallSession(self.ctx, offer, agent, restored, preopened)
        await session.attach()
        self.sessions[call_id] = session
        self._started_at[call_id] = restored.started_at if restored else datetime.now(UTC)
        await self._answer(msg, call_id, True, agent.name)
        session.log.info("claimed call from %s to %s (agent %s)", offer.from_number, offer.to_number, agent.name)
        task = asyncio.create_task(self._run(session), name=f"call-{call_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, session: CallSession) -> None:
        try:
            await session.run()
        except Exception:
            session.log.exception("call failed")
        finally:
            if self.sessions.get(session.call_id) is session:  # not a newer session of the same call
                self.sessions.pop(session.call_id, None)
                self._started_at.pop(session.call_id, None)

    async def _renew_leases(self) -> None:
        """A heartbeat frame to the gateway of every call, every ``call_heartbeat_s``."""
        while True:
            await asyncio.sleep(self.ctx.settings.call_heartbeat_s)
            for session in list(self.sessions.values()):
                with contextlib.suppress(Exception):
                    await session.heartbeat()

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
                    state=session.conversation.state.value if not session.ended.is_set() else "ending",
                )
                with contextlib.suppress(Exception):
                    await self.ctx.nc.publish(subjects.live(call_id), beat.model_dump_json().encode())

    def health(self) -> str | None:
        """``/healthz``: None when this bridge takes calls, else why not (503: not ready)."""
        if self.draining:
            return f"draining: {len(self.sessions)} calls left"
        if not self.ctx.nc.is_connected:
            return "nats disconnected"
        return None

    def stop_taking_calls(self) -> None:
        """The first moment of a drain: ``/healthz`` says 503 and offers are refused at once."""
        if not self.draining:
            self.draining = True
            log.info("draining: no new calls; %d in progress", len(self.sessions))

    async def drain(self, grace: float | None = None) -> None:
        """Stop claiming; let calls in progress finish for up to ``grace`` seconds
        (``DRAIN_GRACE_S``); hand the rest to other bridges through their gateways."""
        grace = self.ctx.settings.drain_grace_s if grace is None else grace
        self.stop_taking_calls()
        for sub in [s for s in (self._sub, *self._subs) if s is not None]:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._sub, self._subs = None, []
        await self.prepared.close()
        if self._offers:  # offers being taken now become calls to finish like the others
            await asyncio.wait(list(self._offers), timeout=10)
        if self._tasks:
            log.info("draining: waiting up to %.0f s for %d calls", grace, len(self._tasks))
            _, pending = await asyncio.wait(list(self._tasks), timeout=grace)
            if pending:
                log.warning("drain grace over: handing %d calls to other bridges", len(self.sessions))
                for session in list(self.sessions.values()):
                    await session.hand_off()
                await asyncio.wait(pending, timeout=10)
        if self.ctx.bus is not None:
            await self.ctx.bus.flush()  # the last calls' last frames
        log.info("drained")
        for task in (self._heartbeat, self._leases):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
