"""What the simulated model says: one :class:`ResponseRun` per ``response.created``.

A run produces the output items one response of the scenario's plan holds (:meth:`Turn.plan`),
in order: spoken messages (audio deltas paced at ``speed`` x real time, cancellable between
deltas) and function calls. :func:`start_response` decides which response comes next. Every run
reports the account's rate limits (``rate_limits.updated``) after ``response.created``, as the
real API does, and ends ``completed``, ``cancelled``, ``incomplete`` or ``failed``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import itertools
import math
import re
import time
from array import array
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson

from .audio import decode
from .scenario import Item, ToolCall, Turn
from .speech import synthesize

if TYPE_CHECKING:
    from .realtime_session import SimSession

__all__ = ["ResponseRun", "bytes_per_ms", "start_response"]


def bytes_per_ms(format_type: str | None) -> int:
    """Audio bytes per millisecond: G.711 is 8 kHz x 1 byte, ``audio/pcm`` 24 kHz x 2 bytes."""
    return 48 if format_type == "audio/pcm" else 8


def _render(text: str, seed: int, format_type: str | None) -> bytes:
    ulaw = synthesize(text, seed)
    if format_type != "audio/pcm":
        return ulaw
    # A session reset to 24 kHz PCM (trap 5) really gets PCM: on a phone that is static.
    samples = array("h")
    for s in decode(ulaw):
        samples.extend((s, s, s))
    return samples.tobytes()


_SAY_EXACTLY = re.compile(r'exactly:\s*"([^"]+)"', re.IGNORECASE)
_FAILED = {"type": "failed", "error": {
    "type": "server_error", "code": "server_error",
    "message": "The server had an error while processing your request. Sorry about that!"}}  # fmt: skip


def start_response(session: SimSession, *, client: bool, request: dict | None = None) -> ResponseRun:
    """Begin the next response; the caller has checked that none is active.

    A client ``response.create`` whose instructions say ``exactly: "..."`` speaks that text (as
    a model follows such an instruction) without consuming a turn; with ``conversation: "none"``
    the reply stays out of the conversation. A client ``response.create`` once the outputs of
    every awaited tool call are in continues that tool turn; anything else gives the pending
    response (a caller turn not yet answered, or a failed response tried again) or consumes the
    next turn.
    """
    request = request or {}
    said = _SAY_EXACTLY.search(request.get("instructions") or "")
    if client and said:
        run = ResponseRun(session, [Item(text=said.group(1))], in_conversation=request.get("conversation") != "none")
    else:
        wait = session.tool_wait
        if client and wait and wait["outputs"] >= wait["call_ids"]:
            turn, step = wait["turn"], wait["next"]
        elif session.pending is not None:
            turn, step = session.pending
        else:
            turn, step = session.next_turn(), 0
        session.pending, session.tool_wait = None, None
        plan = turn.plan()
        step = min(step, len(plan) - 1)
        last = step == len(plan) - 1
        fail = last and session.failures.get(id(turn), 0) < turn.failures
        if fail:
            session.failures[id(turn)] = session.failures.get(id(turn), 0) + 1
        run = ResponseRun(session, plan[step], turn=turn, step=step, fail=fail,
                          incomplete=turn.incomplete if last else None)  # fmt: skip
    session.active = run
    session.spawn(run.run())
    return run


class ResponseRun:
    """One model response; :meth:`cancel` stops its audio at the next delta boundary."""

    def __init__(
        self,
        session: SimSession,
        items: list[Item],
        *,
        turn: Turn | None = None,
        step: int = 0,
        in_conversation: bool = True,
        fail: bool = False,
        incomplete: str | None = None,
    ) -> None:
        self.session = session
        self.items = items
        self.turn, self.step = turn, step
        self.in_conversation = in_conversation
        self.fail, self.incomplete = fail, incomplete
        self.id = session.new_id("resp")
        self.cancel_reason: str | None = None
        self._wake = asyncio.Event()
        scenario = session.scenario
        self.chunks = (turn.audio_chunks if turn else ()) or scenario.audio_chunks

    def cancel(self, reason: str) -> None:
        """Cancel with ``reason`` (``turn_detected`` or ``client_cancelled``)."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
            self._wake.set()

    # ---- helpers --------------------------------------------------------------------------
    def _response(self, status: str, output: list, usage: dict | None = None) -> dict[str, Any]:
        out = self.session.session["audio"]["output"]
        details: dict[str, Any] | None = None
        if status == "cancelled":
            details = {"type": "cancelled", "reason": self.cancel_reason}
        elif status == "incomplete":
            details = {"type": "incomplete", "reason": self.incomplete}
        elif status == "failed":
            details = copy.deepcopy(_FAILED)
        elif status == "completed":
            details = {"type": "completed"}
        return {
            "id": self.id, "object": "realtime.response", "conversation_id": self.session.conversation_id,
            "status": status, "status_details": details, "output": output, "output_modalities": ["audio"],
            "audio": {"output": {"format": out["format"], "voice": out.get("voice")}},
            "max_output_tokens": "inf", "metadata": None, "usage": usage,
        }  # fmt: skip

    def _usage(self, out_text: str, out_audio_ms: int) -> dict[str, Any]:
        """Deterministic, plausible token counts: ~10 audio tokens/s in, ~20/s out.

        The whole conversation so far is input to every response, and the previous response's
        input is cached in 64-token blocks, as the real API reports it.
        """
        s, state = self.session, self.session.usage_state
        text_in = len(s.session.get("instructions") or "") // 4 + 1 + 20 * len(s.session.get("tools") or [])
        text_in += state["text_in"]
        audio_in = state["audio_in"]
        total_in = text_in + audio_in
        cached = min(total_in, state["last_input"] // 64 * 64)
        cached_text = min(cached, text_in)
        text_out, audio_out = len(out_text) // 4 + 1, out_audio_ms // 50
        state["last_input"] = total_in
        state["text_in"] += text_out
        state["audio_in"] += audio_out
        return {
            "total_tokens": total_in + text_out + audio_out, "input_tokens": total_in,
            "output_tokens": text_out + audio_out,
            "input_token_details": {
                "text_tokens": text_in, "audio_tokens": audio_in, "cached_tokens": cached,
                "cached_tokens_details": {"text_tokens": cached_text, "audio_tokens": cached - cached_text},
            },
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
        }  # fmt: skip

    async def _rate_limits(self) -> None:
        """``rate_limits.updated``: a request and a reservation of output tokens taken from the
        account's limits (shared by every session of the simulator)."""
        sim = self.session._sim
        if sim is None:
            return
        limits = sim.rate_limits
        limits["requests"][1] = max(0, limits["requests"][1] - 1)
        limits["tokens"][1] = max(0, limits["tokens"][1] - 4096)
        await self.session.emit({"type": "rate_limits.updated", "rate_limits": [
            {"name": name, "limit": limit, "remaining": remaining,
             "reset_seconds": round(60 * (1 - remaining / limit), 3)}
            for name, (limit, remaining) in limits.items()
        ]})  # fmt: skip

    async def _pace(self, deadline: float) -> None:
        delay = deadline - asyncio.get_running_loop().time()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _sizes(self, bpm: int, default_ms: int) -> Iterator[int]:
        """Byte sizes of successive audio deltas: the scripted pattern (cycled) or regular."""
        if not self.chunks:
            return itertools.repeat(default_ms * bpm)
        return itertools.cycle(max(1, n * bpm // 8) for n in self.chunks)

    async def _open_item(self, index: int, item: dict) -> None:
        s = self.session
        await s.emit(
            {"type": "response.output_item.added", "response_id": self.id, "output_index": index, "item": item}
        )
        self._previous = None
        if self.in_conversation:  # an out-of-band response adds nothing to the conversation
            self._previous = s.add_item(item["id"])
            await s.emit({"type": "conversation.item.added", "previous_item_id": self._previous, "item": item})

    async def _close_item(self, index: int, item: dict) -> None:
        s = self.session
        await s.emit(
            {"type": "response.output_item.done", "response_id": self.id, "output_index": index, "item": item}
        )
        if self.in_conversation:
            await s.emit({"type": "conversation.item.done", "previous_item_id": self._previous, "item": item})

    def _release(self) -> None:
        """Stop being the active response; start the one a caller turn left waiting, if any."""
        s = self.session
        if s.active is self:
            s.active = None
        if s.active is None and s.respond_after_active:
            s.respond_after_active = False
            with contextlib.suppress(RuntimeError):  # the loop is closing with the session
                start_response(s, client=False)

    # ---- the response ---------------------------------------------------------------------
    async def run(self) -> None:
        """The whole response: created, rate limits, each output item in order, done."""
        s = self.session
        try:
            await s.emit({"type": "response.created", "response": self._response("in_progress", [])})
            await self._rate_limits()
            if self.fail:
                # Failed before any output; the next response tries the same step again.
                if self.turn is not None:
                    s.pending = (self.turn, self.step)
                if s.active is self:
                    s.active = None
                await s.emit({"type": "response.done", "response": self._response("failed", [], None)})
                return
            outputs: list[dict] = []
            text, audio_ms, start_audio_ms = "", 0, s.audio_ms
            last = len(self.items) - 1
            for index, planned in enumerate(self.items):
                if self.cancel_reason:
                    break
                if planned.tool is not None:
                    item = await self._function_call(index, planned.tool)
                    text += item["arguments"]
                else:
                    item, generated_ms = await self._speak(
                        index, planned.text or "", cut=self.incomplete is not None and index == last
                    )
                    text += item["content"][0]["transcript"]
                    audio_ms += generated_ms
                outputs.append(item)
            if self.cancel_reason:
                status = "cancelled"
            elif self.incomplete:
                status = "incomplete"
            else:
                status = "completed"
            call_ids = {i["call_id"] for i in outputs if i["type"] == "function_call"}
            if status == "completed" and call_ids and self.turn is not None:
                s.tool_wait = {"turn": self.turn, "next": self.step + 1, "call_ids": call_ids, "outputs": set()}
            usage = self._usage(text, audio_ms)
            # No longer active before response.done leaves: a client may answer it at once.
            if s.active is self:
                s.active = None
            await s.emit({"type": "response.done", "response": self._response(status, outputs, usage)})
            td = s.turn_detection or {}
            if status == "completed" and audio_ms and td.get("idle_timeout_ms"):
                # The idle clock starts when the reply has been played out (audio time).
                s.idle_deadline_ms = start_audio_ms + audio_ms + td["idle_timeout_ms"]
        finally:
            self._release()

    async def _function_call(self, index: int, tool: ToolCall) -> dict:
        """A function call item, its arguments streamed in three deltas."""
        s = self.session
        item_id, call_id, arguments = s.new_id("item"), s.new_id("call"), orjson.dumps(tool.arguments).decode()
        item = {"id": item_id, "object": "realtime.item", "type": "function_call", "status": "in_progress",
                "name": tool.name, "call_id": call_id, "arguments": ""}  # fmt: skip
        await self._open_item(index, item)
        where = {"response_id": self.id, "item_id": item_id, "output_index": index, "call_id": call_id}
        step = max(1, math.ceil(len(arguments) / 3))
        for i in range(0, len(arguments), step):
            await s.emit({"type": "response.function_call_arguments.delta", **where, "delta": arguments[i : i + step]})
        await s.emit({"type": "response.function_call_arguments.done", **where, "name": tool.name, "arguments": arguments})
        item = {**item, "status": "completed", "arguments": arguments}
        await self._close_item(index, item)
        return item

    async def _speak(self, index: int, text: str, *, cut: bool = False) -> tuple[dict, int]:
        """A spoken message item: audio deltas paced at ``speed`` x real time, with its transcript.
        ``cut`` stops it half-way (an incomplete response). Returns the item and its audio ms."""
        s = self.session
        sim = s._sim
        fmt = s.session["audio"]["output"]["format"].get("type")
        bpm = bytes_per_ms(fmt)
        item_id = s.new_id("item")
        s.output_audio[item_id], s.item_bpm[item_id] = bytearray(), bpm
        s.output_order.append(item_id)
        item = {"id": item_id, "object": "realtime.item", "type": "message", "role": "assistant",
                "status": "in_progress", "content": []}  # fmt: skip
        await self._open_item(index, item)
        where = {"response_id": self.id, "item_id": item_id, "output_index": index, "content_index": 0}
        await s.emit({"type": "response.content_part.added", **where, "part": {"type": "audio", "transcript": ""}})
        # Unique per item (seeded by session and item), so a test can find it in a recording.
        audio = await asyncio.to_thread(_render, text, s.index * 1000 + len(s.output_order), fmt)
        if cut:
            audio = audio[: len(audio) // 2 // (20 * bpm) * (20 * bpm)]
            full = len(audio) * 2
        else:
            full = len(audio)
        speed = sim.speed if sim else 0
        words, spoken, offset = text.split(" "), 0, 0
        start = asyncio.get_running_loop().time()
        sizes = self._sizes(bpm, sim.audio_chunk_ms if sim else 100)
        while offset < len(audio) and not self.cancel_reason:
            piece = audio[offset : offset + next(sizes)]
            offset += len(piece)
            s.output_audio[item_id] += piece
            s.audio_produced = True
            s.output_times.append((time.monotonic(), len(piece)))
            await s.emit({"type": "response.output_audio.delta", **where, "delta": base64.b64encode(piece).decode()})
            said = math.ceil(len(words) * offset / full)
            if said > spoken:
                delta = (" " if spoken else "") + " ".join(words[spoken:said])
                spoken = said
                await s.emit({"type": "response.output_audio_transcript.delta", **where, "delta": delta})
            if speed > 0:
                await self._pace(start + offset / bpm / 1000 / speed)
        transcript = " ".join(words[:spoken])
        stopped = self.cancel_reason is not None or cut
        await s.emit({"type": "response.output_audio.done", **where})
        await s.emit({"type": "response.output_audio_transcript.done", **where, "transcript": transcript})
        part = {"type": "audio", "transcript": transcript}
        await s.emit({"type": "response.content_part.done", **where, "part": part})
        item = {**item, "status": "incomplete" if stopped else "completed",
                "content": [{"type": "output_audio", "transcript": transcript}]}  # fmt: skip
        await self._close_item(index, item)
        return item, len(s.output_audio[item_id]) // bpm
