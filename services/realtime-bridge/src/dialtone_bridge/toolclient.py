"""The tool-runner over NATS: the catalog and tool calls (``nats.micro`` endpoints).

A caller is waiting in silence while a tool runs, so a missing runner must be noticed in about a
second, not at the tool's timeout:

- nobody subscribed: the server answers "no responders" at once; the request is retried for
  ``NO_RUNNER_GRACE_S`` (a runner restarting) and then answered with an error;
- the runner died with the request in flight (kill -9, crash): NATS never says so, so while the
  request waits, every ``LIVENESS_EVERY_S`` the runners' ``nats.micro`` PING subject is checked for
  a responder. None means no runner is left to answer, and the call fails then. With several
  runners, the death of the one holding the request still shows only at the timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

import nats.errors
from dialtone_proto import subjects
from dialtone_proto.tools import ToolCallReply, ToolCallRequest, ToolCatalog, ToolSpec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.micro.service import ServiceVerb, control_subject
from pydantic import ValidationError

log = logging.getLogger("dialtone.bridge.tools")

CATALOG_TTL_S = 30.0
CATALOG_FIRST_WAIT_S = 5.0  # with no catalog yet (runners starting with the platform)
NO_RUNNER_GRACE_S = 1.0  # how long a request waits for a runner to subscribe (a restart)
LIVENESS_EVERY_S = 1.0  # how often a request in flight checks that some runner is still there
PING_TIMEOUT_S = 0.5


class RunnerLost(Exception):
    """Every runner went away while a request was in flight."""


class ToolClient:
    def __init__(self, nc: Client, timeout_s: float) -> None:
        self.nc, self.timeout_s = nc, timeout_s
        self._catalog: dict[str, ToolSpec] = {}
        self._fetched = 0.0
        self._lock = asyncio.Lock()
        self._seen_alive = float("-inf")
        self._ping_subject = control_subject(ServiceVerb.PING, subjects.TOOLS_SERVICE)

    async def catalog(self) -> dict[str, ToolSpec]:
        """Every tool the runners offer, cached for a while. The first time, waits up to ~5 s for a
        runner; later, a stale catalog is kept after about a second without one."""
        async with self._lock:
            if self._catalog and time.monotonic() - self._fetched < CATALOG_TTL_S:
                return self._catalog
            deadline = time.monotonic() + (NO_RUNNER_GRACE_S if self._catalog else CATALOG_FIRST_WAIT_S)
            attempt = 0
            while True:
                attempt += 1
                try:
                    reply = await self.nc.request(subjects.TOOLS_CATALOG, b"{}", timeout=1.0)
                    catalog = ToolCatalog.model_validate_json(reply.data)
                    self._catalog = {t.name: t for t in catalog.tools}
                    self._fetched = time.monotonic()
                    return self._catalog
                except (nats.errors.NoRespondersError, nats.errors.TimeoutError, ValidationError) as exc:
                    log.warning("tool catalog unavailable (%s), attempt %d", type(exc).__name__, attempt)
                if time.monotonic() >= deadline:
                    return self._catalog  # stale is better than none
                await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    async def call(self, request: ToolCallRequest, timeout_s: float | None = None) -> ToolCallReply:
        """Run one tool. Transport failures come back as an error reply for the model, never raise.
        A request nobody received (no responders) is retried briefly; a timed-out one is not, since
        the tool may have run."""
        timeout = (timeout_s or self.timeout_s) + 1.0
        try:
            reply = await self._request(request.model_dump_json().encode(), timeout)
            if reply.headers and reply.headers.get("Nats-Service-Error-Code"):
                return _failed(reply.headers.get("Nats-Service-Error", "tool-runner error"))
            return ToolCallReply.model_validate_json(reply.data)
        except nats.errors.NoRespondersError:
            return _failed("no tool-runner is available")
        except RunnerLost:
            log.warning("tool-runner lost while running %s (call %s)", request.name, request.call_id)
            return _failed(f"the tool-runner stopped while running {request.name}; it may or may not have run")
        except nats.errors.TimeoutError:
            return _failed(f"tool {request.name} timed out")
        except ValidationError as exc:
            return _failed(f"bad reply from tool-runner: {exc.error_count()} errors")
        except nats.errors.MaxPayloadError:
            return _failed(f"the call to {request.name} is too large to send ({len(request.arguments)} "
                           "characters of arguments)")
        except nats.errors.Error as exc:  # connection closed or draining: the bridge is going down
            return _failed(f"tool-runner unreachable ({type(exc).__name__})")

    async def _request(self, payload: bytes, timeout: float) -> Msg:
        """One request to the call endpoint, retried while nobody is subscribed, for a short while."""
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                return await self._watched(self.nc.request(subjects.TOOLS_CALL, payload, timeout=timeout))
            except nats.errors.NoRespondersError:
                attempt += 1
                left = NO_RUNNER_GRACE_S - (time.monotonic() - started)
                if left <= 0:
                    raise
                await asyncio.sleep(min(0.05 * attempt, 0.2, left))

    async def _watched(self, request: Coroutine[Any, Any, Msg]) -> Msg:
        """Await ``request``, giving up if no runner is left to answer it."""
        task = asyncio.create_task(request)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=LIVENESS_EVERY_S)
                if done:
                    return task.result()
                if not await self._runner_present():
                    raise RunnerLost
        finally:
            if not task.done():
                task.cancel()  # nats-py forgets the request's reply slot when its wait is cancelled
                await asyncio.wait({task})

    async def _runner_present(self) -> bool:
        """Whether any tool-runner answers its ``nats.micro`` PING subject. A slow answer counts as
        present (a runner busy, not gone); only "no responders" means none is left. Shared by the
        calls in flight: one check per half interval at most."""
        if time.monotonic() - self._seen_alive < LIVENESS_EVERY_S / 2:
            return True
        try:
            await self.nc.request(self._ping_subject, b"", timeout=PING_TIMEOUT_S)
        except nats.errors.NoRespondersError:
            return False
        except nats.errors.TimeoutError:
            return True
        self._seen_alive = time.monotonic()
        return True


def _failed(error: str) -> ToolCallReply:
    return ToolCallReply(ok=False, output={"error": error}, error=error)
