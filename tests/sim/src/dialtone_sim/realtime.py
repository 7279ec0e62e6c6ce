"""A local stand-in for the OpenAI Realtime API (GA interface), speaking WebSocket.

Usage::

    async with RealtimeSimulator(Scenario.from_dict(...), api_key="sk-test") as sim:
        connect(sim.url + "?model=gpt-realtime", additional_headers={"Authorization": ...})
        ...
        assert not sim.violations

The handshake, beta-shape rejection and lifetime of sessions live here; the conversation itself
is :class:`~dialtone_sim.realtime_session.SimSession`.

What the simulator saw go wrong is kept in three lists, each also appended, prefixed with its
kind and session, to one chronological log (:meth:`RealtimeSimulator.sim_errors`, judged by
:mod:`dialtone_sim.verdicts`):

- ``violations``: what the client did that the real API refuses: an event the SDK types reject,
  a refused request (a truncate past the audio, an unknown item, a voice change after audio...),
  the retired beta shape, a wrong key. Only the races that server VAD makes unavoidable
  (``conversation_already_has_active_response``, ``response_cancel_not_active``) are not
  violations; every refused event, races included, is in the session's ``refused_events``.
- ``server_violations``: events the simulator itself sent that fail the SDK oracle.
- ``internal_errors``: the simulator's own exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from http import HTTPStatus
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from . import verdicts
from .realtime_session import SimSession
from .scenario import Scenario

__all__ = ["RealtimeSimulator", "SimSession"]

log = logging.getLogger(__name__)


class RealtimeSimulator:
    """Serve ``ws://HOST:PORT/v1/realtime`` like the real API, recording every session.

    Args:
        scenario: the script the model follows (may be replaced at any time; applies to
            turns consumed afterwards). None means every reply is the fallback.
        api_key: when set, require ``Authorization: Bearer <api_key>`` (else HTTP 401).
        validate: check every client and server event against the SDK types (turn off for load).
        audio_chunk_ms: audio per ``response.output_audio.delta``.
        speed: audio is generated at ``speed`` x real time; 0 means as fast as possible.
        expire_after_s: end each session this long after it starts with ``session_expired``.
        connect_delay_s: the first ``session.updated`` of a session comes this long after the socket
            opened, as a real socket's set-up and first update take about 1.5 s.
    """

    def __init__(
        self,
        scenario: Scenario | None = None,
        *,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        validate: bool = True,
        audio_chunk_ms: int = 100,
        speed: float = 4.0,
        expire_after_s: float | None = None,
        connect_delay_s: float = 0.0,
    ) -> None:
        self.scenario = scenario
        # Scripts of tagged calls (dial(tag=)), by tag: each such call's sessions follow its own,
        # whatever ``scenario`` says, so calls with scripts of their own can run at once.
        self.scripts: dict[int, Scenario] = {}
        self.api_key = api_key
        self.host, self.port = host, port
        self.validate = validate
        self.audio_chunk_ms = audio_chunk_ms
        self.speed = speed
        self.expire_after_s = expire_after_s
        self.connect_delay_s = connect_delay_s
        self.sessions: list[SimSession] = []
        self.violations: list[str] = []
        self.server_violations: list[str] = []
        self.internal_errors: list[str] = []
        self._log: list[str] = []
        # Account-wide rate limits, reported with rate_limits.updated at every response.
        self.rate_limits = {"requests": [5000, 5000], "tokens": [400_000, 400_000]}  # name: [limit, remaining]
        self._server: Server | None = None
        self._connections: dict[int, ServerConnection] = {}
        verdicts.register(self)

    def sim_errors(self) -> list[str]:
        """Every violation, server violation and internal error so far, oldest first."""
        return self._log

    def record(self, kind: str, message: str, session: SimSession | None = None) -> None:
        """Record a ``violation``, ``server_violation`` or ``internal_error``."""
        where = f"session {session.index}: " if session is not None else ""
        {"violation": self.violations, "server_violation": self.server_violations,
         "internal_error": self.internal_errors}[kind].append(f"{where}{message}")  # fmt: skip
        self._log.append(f"realtime {kind}: {where}{message}")

    @property
    def url(self) -> str:
        """``ws://host:port/v1/realtime`` (append ``?model=...`` when connecting)."""
        return f"ws://{self.host}:{self.port}/v1/realtime"

    async def start(self) -> None:
        """Listen; with ``port=0`` the chosen port is in :attr:`port` afterwards."""
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._check_request,
            max_size=2**24,
            ping_interval=None,  # the real API does not ping; keep the wire free of surprises
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("realtime simulator listening on %s", self.url)

    async def stop(self) -> None:
        """Close every session (code 1001) and stop listening."""
        if self._server is None:
            return
        self._server.close(close_connections=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> RealtimeSimulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def drop(self, session: SimSession) -> None:
        """Cut the session's TCP connection without a close frame (a network failure)."""
        ws = self._connections.get(session.index)
        if ws is not None:
            ws.transport.abort()
            await session.closed.wait()

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != "/v1/realtime":
            self.record("violation", f"connection to unknown path {request.path!r} (HTTP 404)")
            return connection.respond(HTTPStatus.NOT_FOUND, "Not found\n")
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.record("violation", "connection with a wrong API key (HTTP 401)")
            return connection.respond(HTTPStatus.UNAUTHORIZED, "Incorrect API key provided\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        query = parse_qs(urlsplit(ws.request.path).query)
        session = SimSession(
            index=len(self.sessions),
            model=query.get("model", ["gpt-realtime"])[0],
            headers={k.lower(): v for k, v in ws.request.headers.raw_items()},
        )
        session._sim = self
        self.sessions.append(session)
        self._connections[session.index] = ws
        log.info("realtime session %d opened (model %s)", session.index, session.model)
        try:
            if "realtime=v1" in session.headers.get("openai-beta", ""):
                session.violation("connected with the beta header OpenAI-Beta: realtime=v1 (closed 4000)")
                await ws.close(4000, "beta_api_shape_disabled")
                return
            await session.serve(self, ws)
        except (ConnectionClosed, OSError):
            pass  # the client left mid-event
        except Exception as exc:
            log.exception("realtime session %d failed", session.index)
            session.internal_error(repr(exc))
        finally:
            await session.shutdown()
            # wait_closed() after an abort can lag; the code may still be None then.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await ws.wait_closed()
            session.close_code = ws.close_code
            self._connections.pop(session.index, None)
            session.closed.set()
            log.info("realtime session %d closed (code %s)", session.index, session.close_code)
