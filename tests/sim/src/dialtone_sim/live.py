"""A local stand-in for OpenAI GPT-Live (primary WebSocket), beside the Realtime simulator.

Usage::

    async with LiveSimulator(Scenario.from_dict(...), api_key="sk-test") as sim:
        connect(sim.url, additional_headers={"Authorization": ...})   # then session.start
        ...
        assert not sim.violations

The handshake and the lifetime of sessions live here; the conversation itself is
:class:`~dialtone_sim.live_session.LiveSession`. What it saw go wrong is kept as the Realtime
simulator keeps it (``violations``, ``server_violations``, ``internal_errors``, and one
chronological log judged by :mod:`dialtone_sim.verdicts`), so a test in which a client sends an
event GPT-Live would refuse fails.

Errors on demand: :attr:`LiveSimulator.refuse_starts` answers the next session starts with an
``error`` and a close; :meth:`LiveSession.fail` sends an ``error`` at any time;
:meth:`LiveSession.expire` ends a session as the duration limit does; :meth:`LiveSimulator.drop`
cuts a connection without a close frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from http import HTTPStatus
from types import TracebackType
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from . import verdicts
from .live_session import LiveSession
from .scenario import Scenario

__all__ = ["LiveSession", "LiveSimulator"]

log = logging.getLogger(__name__)

PATH = "/v1/live/sessions"


class LiveSimulator:
    """Serve ``ws://HOST:PORT/v1/live/sessions`` like GPT-Live, recording every session.

    Args:
        scenario: the script the model follows (replaceable at any time); None: every reply is the
            fallback.
        api_key: when set, require ``Authorization: Bearer <api_key>`` (else HTTP 401).
        validate: check every client and server event against ``openai.types.live``.
        audio_chunk_ms: audio per ``session.output_audio.delta`` (100 ms, as GPT-Live sends).
        speed: output audio is paced at ``speed`` x real time (1.0: real time).
        start_delay_s: how long after ``session.start`` the session is ``session.started``.
        usage_every_s: how often ``session.usage.updated`` reports the cumulative seconds.
        expire_after_s: end each session this long after it starts (``session.closed``, ``expired``).
        idle_silence: stream silence while the model is not speaking, as GPT-Live does.
        think_s: from the caller's last word (or a tool's output) to the model's answer.
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
        speed: float = 1.0,
        start_delay_s: float = 0.05,
        usage_every_s: float = 1.0,
        expire_after_s: float | None = None,
        idle_silence: bool = True,
        think_s: float = 0.2,
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
        self.start_delay_s = start_delay_s
        self.usage_every_s = usage_every_s
        self.expire_after_s = expire_after_s
        self.idle_silence = idle_silence
        self.think_s = think_s
        self.refuse_starts = 0  # the next N session.start are refused (an error, then a close)
        self.sessions: list[LiveSession] = []
        self.violations: list[str] = []
        self.server_violations: list[str] = []
        self.internal_errors: list[str] = []
        self._log: list[str] = []
        self._server: Server | None = None
        self._connections: dict[int, ServerConnection] = {}
        verdicts.register(self)

    def sim_errors(self) -> list[str]:
        """Every violation, server violation and internal error so far, oldest first."""
        return self._log

    def record(self, kind: str, message: str, session: LiveSession | None = None) -> None:
        """Record a ``violation``, ``server_violation`` or ``internal_error``."""
        where = f"session {session.index}: " if session is not None else ""
        {"violation": self.violations, "server_violation": self.server_violations,
         "internal_error": self.internal_errors}[kind].append(f"{where}{message}")  # fmt: skip
        self._log.append(f"live {kind}: {where}{message}")

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}{PATH}"

    async def start(self) -> None:
        self._server = await serve(
            self._handle, self.host, self.port, process_request=self._check_request, max_size=2**24,
            ping_interval=None,
        )  # fmt: skip
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("GPT-Live simulator listening on %s", self.url)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close(close_connections=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> LiveSimulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def drop(self, session: LiveSession) -> None:
        """Cut the session's TCP connection without a close frame (a network failure)."""
        ws = self._connections.get(session.index)
        if ws is not None:
            ws.transport.abort()
            await session.closed.wait()

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        if parts.path != PATH:
            self.record("violation", f"connection to unknown path {request.path!r} (HTTP 404)")
            return connection.respond(HTTPStatus.NOT_FOUND, "Not found\n")
        if parts.query:
            # The model goes in session.start, never in the URL.
            self.record("violation", f"query parameters on the Live URL: {parts.query!r} (HTTP 400)")
            return connection.respond(HTTPStatus.BAD_REQUEST, "The Live URL takes no query parameters\n")
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.record("violation", "connection with a wrong API key (HTTP 401)")
            return connection.respond(HTTPStatus.UNAUTHORIZED, "Incorrect API key provided\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        session = LiveSession(index=len(self.sessions), headers={k.lower(): v for k, v in ws.request.headers.raw_items()})
        session._sim = self
        self.sessions.append(session)
        self._connections[session.index] = ws
        log.info("live session %d opened", session.index)
        try:
            await session.serve(self, ws)
        except (ConnectionClosed, OSError):
            pass
        except Exception as exc:
            log.exception("live session %d failed", session.index)
            session.internal_error(repr(exc))
        finally:
            await session.shutdown()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await ws.wait_closed()
            session.close_code = ws.close_code
            self._connections.pop(session.index, None)
            session.closed.set()
            log.info("live session %d closed (code %s)", session.index, session.close_code)
