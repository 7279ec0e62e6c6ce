"""What the simulated model says: one :class:`ResponseRun` per ``response.created``.

A run either speaks (audio deltas paced at ``speed`` x real time, cancellable between chunks)
or makes one scripted function call. :func:`start_response` decides which, following the
scenario rules in :mod:`.scenario`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import re
import time
from array import array
from typing import TYPE_CHECKING, Any

import orjson

from .audio import decode
from .scenario import ToolCall, Turn
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


def start_response(session: SimSession, *, client: bool, request: dict | None = None) -> ResponseRun:
    """Begin the next response; the caller has checked that none is active.

    A client ``response.create`` whose instructions say ``exactly: "..."`` speaks that text (as
    a model follows such an instruction) without consuming a turn; with ``conversation: "none"``
    the reply stays out of the conversation. A client ``response.create`` after the output of the
    awaited tool call continues that tool turn; anything else answers the pending caller turn or
    consumes the next one.
    """
    request = request or {}
    said = _SAY_EXACTLY.search(request.get("instructions") or "")
    if client and said:
        run = ResponseRun(session, Turn(caller=None, agent=said.group(1)),
                          in_conversation=request.get("conversation") != "none")
        session.active = run
        session.spawn(run.speak(said.group(1)))
        return run
    wait = session.tool_wait
    if client and wait and wait["output"]:
        turn, tool_index = wait["turn"], wait["next"]
    else:
        turn, tool_index = session.pending_turn or session.next_turn(), 0
    session.pending_turn, session.tool_wait = None, None
    run = ResponseRun(session, turn)
    session.active = run
    if tool_index < len(turn.tools):
        call_id = session.new_id("call")
        session.tool_wait = {"turn": turn, "next": tool_index + 1, "call_id": call_id, "output": False}
        session.spawn(run.function_call(turn.tools[tool_index], call_id))
    else:
        session.spawn(run.speak(turn.agent))
    return run


class ResponseRun:
    """One model response; :meth:`cancel` stops its audio at the next chunk boundary."""

    def __init__(self, session: SimSession, turn: Turn, *, in_conversation: bool = True) -> None:
        self.session = session
        self.turn = turn
        self.in_conversation = in_conversation
        self.id = session.new_id("resp")
        self.cancel_reason: str | None = None
        self._wake = asyncio.Event()

    def cancel(self, reason: str) -> None:
        """Cancel with ``reason`` (``turn_detected`` or ``client_cancelled``)."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
            self._wake.set()

    # ---- helpers --------------------------------------------------------------------------
    def _response(self, status: str, output: list, usage: dict | None = None) -> dict[str, Any]:
        out = self.session.session["audio"]["output"]
        details = None
        if status == "cancelled":
            details = {"type": "cancelled", "reason": self.cancel_reason}
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

    async def _pace(self, deadline: float) -> None:
        delay = deadline - asyncio.get_running_loop().time()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _open_item(self, item: dict) -> None:
        s = self.session
        await s.emit({"type": "response.created", "response": self._response("in_progress", [])})
        await s.emit(
            {"type": "response.output_item.added", "response_id": self.id, "output_index": 0, "item": item}
        )
        self._previous = None
        if self.in_conversation:  # an out-of-band response adds nothing to the conversation
            previous, s.last_item_id = s.last_item_id, item["id"]
            await s.emit({"type": "conversation.item.added", "previous_item_id": previous, "item": item})
            self._previous = previous

    async def _close_item(self, item: dict, status: str, usage: dict) -> None:
        s = self.session
        await s.emit(
            {"type": "response.output_item.done", "response_id": self.id, "output_index": 0, "item": item}
        )
        if self.in_conversation:
            await s.emit({"type": "conversation.item.done", "previous_item_id": self._previous, "item": item})
        # No longer active before response.done leaves: a client may answer it at once.
        if s.active is self:
            s.active = None
        await s.emit({"type": "response.done", "response": self._response(status, [item], usage)})

    def _release(self) -> None:
        """Stop being the active response; start the one a caller turn left waiting, if any."""
        s = self.session
        if s.active is self:
            s.active = None
        if s.active is None and s.respond_after_active:
            s.respond_after_active = False
            with contextlib.suppress(RuntimeError):  # the loop is closing with the session
                start_response(s, client=False)

    # ---- the two kinds of response --------------------------------------------------------
    async def function_call(self, tool: ToolCall, call_id: str) -> None:
        """A response whose single output item is a function call."""
        s = self.session
        try:
            item_id, arguments = s.new_id("item"), orjson.dumps(tool.arguments).decode()
            item = {"id": item_id, "object": "realtime.item", "type": "function_call", "status": "in_progress",
                    "name": tool.name, "call_id": call_id, "arguments": ""}  # fmt: skip
            await self._open_item(item)
            where = {"response_id": self.id, "item_id": item_id, "output_index": 0, "call_id": call_id}
            step = max(1, math.ceil(len(arguments) / 3))
            for i in range(0, len(arguments), step):
                await s.emit(
                    {
                        "type": "response.function_call_arguments.delta",
                        **where,
                        "delta": arguments[i : i + step],
                    }
                )
            await s.emit(
                {
                    "type": "response.function_call_arguments.done",
                    **where,
                    "name": tool.name,
                    "arguments": arguments,
                }
            )
            item = {**item, "status": "completed", "arguments": arguments}
            await self._close_item(item, "completed", self._usage(arguments, 0))
        finally:
            self._release()

    async def speak(self, text: str) -> None:
        """A spoken reply: audio deltas paced at ``speed`` x real time, with its transcript."""
        s = self.session
        sim = s._sim
        try:
            fmt = s.session["audio"]["output"]["format"].get("type")
            bpm = bytes_per_ms(fmt)
            item_id = s.new_id("item")
            s.output_audio[item_id], s.item_bpm[item_id] = bytearray(), bpm
            s.output_order.append(item_id)
            start_audio_ms = s.audio_ms
            item = {"id": item_id, "object": "realtime.item", "type": "message", "role": "assistant",
                    "status": "in_progress", "content": []}  # fmt: skip
            await self._open_item(item)
            where = {"response_id": self.id, "item_id": item_id, "output_index": 0, "content_index": 0}
            await s.emit(
                {"type": "response.content_part.added", **where, "part": {"type": "audio", "transcript": ""}}
            )
            # Unique per item (seeded by session and item), so a test can find it in a recording.
            audio = await asyncio.to_thread(_render, text, s.index * 1000 + len(s.output_order), fmt)
            chunk_ms = sim.audio_chunk_ms if sim else 100
            speed = sim.speed if sim else 0
            words, spoken = text.split(" "), 0
            start = asyncio.get_running_loop().time()
            for i, offset in enumerate(range(0, len(audio), chunk_ms * bpm)):
                if self.cancel_reason:
                    break
                piece = audio[offset : offset + chunk_ms * bpm]
                s.output_audio[item_id] += piece
                s.audio_produced = True
                s.output_times.append((time.monotonic(), len(piece)))
                await s.emit(
                    {
                        "type": "response.output_audio.delta",
                        **where,
                        "delta": base64.b64encode(piece).decode(),
                    }
                )
                said = math.ceil(len(words) * (offset + len(piece)) / len(audio))
                if said > spoken:
                    delta = (" " if spoken else "") + " ".join(words[spoken:said])
                    spoken = said
                    await s.emit({"type": "response.output_audio_transcript.delta", **where, "delta": delta})
                if speed > 0:
                    await self._pace(start + (i + 1) * chunk_ms / 1000 / speed)
            transcript = " ".join(words[:spoken])
            cancelled = self.cancel_reason is not None
            await s.emit({"type": "response.output_audio.done", **where})
            await s.emit({"type": "response.output_audio_transcript.done", **where, "transcript": transcript})
            part = {"type": "audio", "transcript": transcript}
            await s.emit({"type": "response.content_part.done", **where, "part": part})
            item = {**item, "status": "incomplete" if cancelled else "completed",
                    "content": [{"type": "output_audio", "transcript": transcript}]}  # fmt: skip
            generated_ms = len(s.output_audio[item_id]) // bpm
            await self._close_item(
                item, "cancelled" if cancelled else "completed", self._usage(transcript, generated_ms)
            )
            td = s.turn_detection or {}
            if not cancelled and td.get("idle_timeout_ms"):
                # The idle clock starts when the reply has been played out (audio time).
                s.idle_deadline_ms = start_audio_ms + generated_ms + td["idle_timeout_ms"]
        finally:
            self._release()
