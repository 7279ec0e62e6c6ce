"""A tiny Realtime client for the simulator's own tests: send events, wait for server events."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

SESSION = {
    "type": "realtime",
    "model": "gpt-realtime",
    "output_modalities": ["audio"],
    "instructions": "You book tables.",
    "audio": {
        "input": {
            "format": {"type": "audio/pcmu"},
            "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"},
            "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                               "silence_duration_ms": 500, "create_response": True, "interrupt_response": True},
        },
        "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"},
    },
    "tools": [{"type": "function", "name": "book_table", "description": "Book a table",
               "parameters": {"type": "object", "properties": {"people": {"type": "integer"}}}}],
    "tool_choice": "auto",
}  # fmt: skip


class Client:
    """Collects every server event; ``wait`` polls the collection with a deadline."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in self.ws:
                self.events.append(orjson.loads(message))

    async def send(self, event: dict) -> None:
        await self.ws.send(orjson.dumps(event).decode())

    async def append(self, audio: bytes, chunk: int = 1600) -> None:
        for i in range(0, len(audio), chunk):
            await self.send(
                {
                    "type": "input_audio_buffer.append",
                    "audio": base64.b64encode(audio[i : i + chunk]).decode(),
                }
            )

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]

    async def wait(self, pred: Callable[[], Any], timeout: float = 5.0) -> Any:  # noqa: ASYNC109 - test helper
        async with asyncio.timeout(timeout):
            while not (result := pred()):  # noqa: ASYNC110 - polling with a deadline
                await asyncio.sleep(0.005)
        return result

    async def wait_type(self, kind: str, count: int = 1, timeout: float = 5.0) -> list[dict]:  # noqa: ASYNC109
        return await self.wait(lambda: len(self.of(kind)) >= count and self.of(kind), timeout)

    async def close(self) -> None:
        await self.ws.close()
        await self._reader


@contextlib.asynccontextmanager
async def client(url: str, key: str | None = "sk-test", headers: dict | None = None):
    hdrs = {"Authorization": f"Bearer {key}"} if key else {}
    hdrs.update(headers or {})
    async with connect(url + "?model=gpt-realtime", additional_headers=hdrs) as ws:
        c = Client(ws)
        try:
            yield c
        finally:
            await c.close()
