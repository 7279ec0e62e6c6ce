"""The tool-runner over NATS: the catalog and tool calls (``nats.micro`` endpoints)."""

from __future__ import annotations

import asyncio
import logging
import time

import nats.errors
from dialtone_proto import subjects
from dialtone_proto.tools import ToolCallReply, ToolCallRequest, ToolCatalog, ToolSpec
from nats.aio.client import Client
from pydantic import ValidationError

log = logging.getLogger("dialtone.bridge.tools")

CATALOG_TTL_S = 30.0


class ToolClient:
    def __init__(self, nc: Client, timeout_s: float) -> None:
        self.nc, self.timeout_s = nc, timeout_s
        self._catalog: dict[str, ToolSpec] = {}
        self._fetched = 0.0
        self._lock = asyncio.Lock()

    async def catalog(self) -> dict[str, ToolSpec]:
        """Every tool the runners offer, cached for a while. Waits up to ~5 s for a runner."""
        async with self._lock:
            if self._catalog and time.monotonic() - self._fetched < CATALOG_TTL_S:
                return self._catalog
            for attempt in range(10):
                try:
                    reply = await self.nc.request(subjects.TOOLS_CATALOG, b"{}", timeout=1.0)
                    catalog = ToolCatalog.model_validate_json(reply.data)
                    self._catalog = {t.name: t for t in catalog.tools}
                    self._fetched = time.monotonic()
                    return self._catalog
                except (nats.errors.NoRespondersError, nats.errors.TimeoutError, ValidationError) as exc:
                    log.warning("tool catalog unavailable (%s), attempt %d", type(exc).__name__, attempt + 1)
                    await asyncio.sleep(0.5)
            return self._catalog  # stale is better than none

    async def call(self, request: ToolCallRequest, timeout_s: float | None = None) -> ToolCallReply:
        """Run one tool. Transport failures come back as an error reply for the model, never raise.
        A request nobody received (no responders) is retried; a timed-out one is not, since the
        tool may have run."""
        timeout = (timeout_s or self.timeout_s) + 1.0
        payload = request.model_dump_json().encode()
        started = time.monotonic()
        for attempt in range(20):
            try:
                reply = await self.nc.request(subjects.TOOLS_CALL, payload, timeout=timeout)
                if reply.headers and reply.headers.get("Nats-Service-Error-Code"):
                    error = reply.headers.get("Nats-Service-Error", "tool-runner error")
                    return ToolCallReply(ok=False, output={"error": error}, error=error)
                return ToolCallReply.model_validate_json(reply.data)
            except nats.errors.NoRespondersError:
                if time.monotonic() - started > timeout:
                    break
                await asyncio.sleep(min(0.05 * (attempt + 1), 0.5))
            except nats.errors.TimeoutError:
                error = f"tool {request.name} timed out"
                return ToolCallReply(ok=False, output={"error": error}, error=error)
            except ValidationError as exc:
                error = f"bad reply from tool-runner: {exc.error_count()} errors"
                return ToolCallReply(ok=False, output={"error": error}, error=error)
        error = "no tool-runner is available"
        return ToolCallReply(ok=False, output={"error": error}, error=error)
