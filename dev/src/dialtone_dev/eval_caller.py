"""The test caller: a script or an LLM persona, speaking real audio on a simulated Twilio call.

The caller lives on Twilio's side of the platform (:mod:`dialtone_sim.twilio_edge`), so its
speech crosses the real call path: gateway, bridge, model, tools and writer. Speech is espeak-ng
offline, or OpenAI text-to-speech with a key (:class:`Voice`).

Turn taking is a person's: before each action the caller waits for the agent's reply to its last
action (at most ``wait_s``) and for that reply to end; ``interrupt`` speaks over the agent instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dialtone_sim.speech import from_wav, synthesize

from dialtone_dev.eval_scenarios import Persona, Step

if TYPE_CHECKING:
    from dialtone_sim.twilio_edge import SimCall
    from openai import AsyncOpenAI

__all__ = ["PersonaError", "Voice", "persona_turn", "run_script", "settle"]

QUIET_MS = 700  # the agent is done when nothing more arrived for this long
REPLY_TIMEOUT_S = 60.0  # a reply that started is waited for this long at most


class PersonaError(Exception):
    """The persona's model could not produce the caller's next line."""


@dataclass
class Voice:
    """Turns the caller's words into 8 kHz mu-law: espeak-ng, or OpenAI TTS when given a client."""

    client: AsyncOpenAI | None = None
    voice: str = "alloy"
    model: str = "gpt-4o-mini-tts"
    _seed: int = field(default=0)

    async def speak(self, text: str) -> bytes:
        self._seed += 1
        if self.client is None:
            return await asyncio.to_thread(synthesize, text, self._seed)
        response = await self.client.audio.speech.create(
            model=self.model, voice=self.voice, input=text, response_format="wav"
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "line.wav"
            path.write_bytes(response.content)
            return await asyncio.to_thread(from_wav, path)


async def _until(condition: Any, timeout: float, call: SimCall) -> bool:  # noqa: ASYNC109
    """Poll ``condition`` every 20 ms; False on timeout, ConnectionError once the call ended."""
    deadline = time.monotonic() + timeout
    while not condition():
        if call.closed:
            raise ConnectionError("call ended")
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def settle(call: SimCall, since: int, wait_s: float) -> bool:
    """Wait for agent audio after the ``since``-th media message (``wait_s`` at most) and for it
    to end. False if the agent said nothing."""
    if not await _until(lambda: len(call.media_received) > since, wait_s, call):
        return False
    with contextlib.suppress(TimeoutError):
        await call.wait_quiet(quiet_ms=QUIET_MS, timeout=REPLY_TIMEOUT_S, since=since)
    return True


async def _interrupt(call: SimCall, mark: int, step: Step, audio: bytes) -> None:
    """Speak ``audio`` over the agent once ``step.after_ms`` of its reply has been heard."""
    if await _until(lambda: len(call.media_received) > mark, step.wait_s, call):
        start = len(call.heard)
        await _until(lambda: len(call.heard) - start >= step.after_ms * 8, step.wait_s, call)
    await call.say(audio)


async def run_script(call: SimCall, steps: list[Step], voice: Voice, *, greeting: bool, end_wait_s: float) -> None:
    """Play ``steps``; then give the agent ``end_wait_s`` to end the call, and hang up.

    Returns early, without error, when the call ends (the agent hung up or transferred)."""
    mark = 0
    first_wait = 10.0 if greeting else 0.0
    try:
        for index, step in enumerate(steps):
            if step.action != "interrupt":
                await settle(call, mark, first_wait if index == 0 else step.wait_s)
            if step.say is not None:
                audio = await voice.speak(step.say)
                await call.say(audio)
            elif step.interrupt is not None:
                await _interrupt(call, mark, step, await voice.speak(step.interrupt))
            elif step.silence is not None:
                await _until(lambda: False, step.silence, call)
            elif step.press is not None:
                for digit in step.press:
                    await call.press(digit)
                    await asyncio.sleep(0.2)
            elif step.hangup:
                await call.hangup()
                return
            mark = len(call.media_received)
        await settle(call, mark, 10.0)
        await _until(lambda: False, end_wait_s, call)
    except ConnectionError:
        return  # the call ended under the script: the expectations say whether that was right
    await call.hangup()


PERSONA_SCHEMA = {
    "type": "object",
    "properties": {
        "say": {"type": "string", "description": "Your next line, as you would say it on the phone."},
        "hang_up": {"type": "boolean", "description": "True when the call is over for you (say your goodbye first)."},
    },
    "required": ["say", "hang_up"],
    "additionalProperties": False,
}


def persona_instructions(persona: Persona) -> str:
    return (
        "You are a person phoning a company's voice agent. Stay in character; never say you are an AI.\n"
        f"Your goal: {persona.goal}\nYour manner: {persona.manner}\n"
        "Each time, you get the conversation so far. Answer with your next line (one or two short "
        "sentences, spoken words only), and hang_up true once your goal is met or clearly cannot be."
    )


async def persona_turn(client: AsyncOpenAI, model: str, persona: Persona, transcript: list[tuple[str, str]]) -> tuple[str, bool]:
    """The persona's next line and whether it then hangs up, from the conversation so far."""
    conversation = "\n".join(f"{who}: {text}" for who, text in transcript) or "(the call has just connected)"
    try:
        response = await client.responses.create(
            model=model,
            instructions=persona_instructions(persona),
            input=[{"role": "user", "content": [{"type": "input_text", "text": conversation}]}],
            text={"format": {"type": "json_schema", "name": "caller_line", "schema": PERSONA_SCHEMA, "strict": True}},
            store=False,
        )
    except Exception as exc:  # the SDK's errors are many; the report needs the message
        raise PersonaError(f"the persona model failed: {type(exc).__name__}: {exc}") from exc
    try:
        answer = json.loads(response.output_text)
        return str(answer["say"]).strip(), bool(answer["hang_up"])
    except (ValueError, KeyError, TypeError) as exc:
        raise PersonaError(f"the persona model answered something else: {response.output_text[:200]!r}") from exc
