"""A local stand-in for Twilio's REST API (``api.twilio.com``) that the official SDK talks to.

Point the SDK at it with ``client.api.base_url = fake.base_url`` (see PROTOCOLS.md 1.4). It serves
the Calls resource the way twilio-python 9.x uses it:

- ``POST /2010-04-01/Accounts/{AccountSid}/Calls.json`` (``calls.create``): 201 and a call resource
  with a new ``CA...`` sid, status ``queued``.
- ``POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`` (``calls(sid).update``):
  ``Status=completed|canceled`` ends the call, ``Twiml=``/``Url=`` redirects it.
- ``GET /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`` (``calls(sid).fetch``).

Every request needs HTTP basic auth with the account sid and auth token (else 401, code 20003);
an unknown sid answers 404 with Twilio's error JSON (code 20404), which the SDK raises as
``TwilioRestException``. Every request is recorded in ``requests`` and every call in ``calls`` with
its history of updates, so a test can assert "hung up via REST" or "redirected to ``<Dial>``".

``post_status`` plays Twilio's part in the other direction: a status callback form POST to the
call's ``StatusCallback`` URL, signed with ``X-Twilio-Signature`` exactly as Twilio signs it.

The fake and the simulated Twilio edge are one Twilio: a call whose media stream is open
(:func:`~dialtone_sim.twilio_edge.open_call`, by CallSid) is known to the API even if no test
registered it, and an update that ends it (``Status=completed|canceled``) or replaces its TwiML
(``Twiml=``/``Url=``) stops that stream: it gets ``stop`` and closes, as real Twilio does. TwiML
that is another ``<Connect><Stream>`` moves the call: after the stop a new stream opens to its URL
(:meth:`~dialtone_sim.twilio_edge.SimCall.moved_by_twilio`). ``failing_updates = n`` makes the
next ``n`` updates fail with 503 (code 20503), as during a Twilio outage.

Requests real Twilio would refuse as the client's mistake (bad credentials, another account, a
missing parameter, an unknown resource path) are kept in ``errors`` (judged by
:mod:`dialtone_sim.verdicts`). A 404 for an unknown or finished call is not one: a client must
expect it when a call ends under it.
"""

from __future__ import annotations

import base64
import secrets
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import aiohttp
from aiohttp import web
from twilio.request_validator import RequestValidator

from . import verdicts
from .twilio_edge import open_call

API_VERSION = "2010-04-01"
_ENDED = {"completed", "canceled", "busy", "failed", "no-answer"}


@dataclass
class RecordedRequest:
    """One HTTP request the fake received."""

    method: str
    path: str
    form: dict[str, list[str]]


@dataclass
class FakeCall:
    """A call the fake knows, with everything the SDK set on it.

    Attributes:
        sid: The CallSid.
        to: The called number.
        from_: The caller id.
        status: Current status (queued, ringing, in-progress, completed...).
        twiml: Inline TwiML last given (create or update), if any.
        url: TwiML URL last given, if any.
        status_callback: Where status callbacks go.
        status_callback_event: The events the creator asked for (``initiated ringing answered completed``).
        machine_detection: ``Enable`` / ``DetectMessageEnd`` if answering-machine detection was asked.
        async_amd: ``"true"`` for asynchronous AMD.
        updates: The form of every ``update`` request, in order.
        callbacks: ``(status, HTTP status of our POST)`` for every status callback sent.
    """

    sid: str
    account_sid: str
    to: str
    from_: str
    status: str = "queued"
    direction: str = "outbound-api"
    twiml: str | None = None
    url: str | None = None
    status_callback: str | None = None
    status_callback_event: list[str] = field(default_factory=list)
    machine_detection: str | None = None
    async_amd: str | None = None
    answered_by: str | None = None
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: datetime | None = None
    ended: datetime | None = None
    updates: list[dict[str, str]] = field(default_factory=list)
    callbacks: list[tuple[str, int]] = field(default_factory=list)
    sequence: int = 0

    @property
    def hung_up(self) -> bool:
        """Whether an ``update(status="completed")`` (or ``canceled``) ended the call."""
        return any(u.get("Status") in ("completed", "canceled") for u in self.updates)

    @property
    def duration_s(self) -> int:
        """Whole seconds between answer and end (0 if never answered)."""
        if self.started is None:
            return 0
        return int(((self.ended or datetime.now(UTC)) - self.started).total_seconds())

    def resource(self, base_path: str) -> dict[str, Any]:
        """The call resource JSON as Twilio returns it (the fields the SDK reads)."""
        uri = f"{base_path}/Calls/{self.sid}.json"
        return {
            "sid": self.sid,
            "account_sid": self.account_sid,
            "parent_call_sid": None,
            "to": self.to,
            "to_formatted": self.to,
            "from": self.from_,
            "from_formatted": self.from_,
            "status": self.status,
            "direction": self.direction,
            "answered_by": self.answered_by,
            "date_created": format_datetime(self.created, usegmt=True),
            "date_updated": format_datetime(datetime.now(UTC), usegmt=True),
            "start_time": format_datetime(self.started, usegmt=True) if self.started else None,
            "end_time": format_datetime(self.ended, usegmt=True) if self.ended else None,
            "duration": str(self.duration_s) if self.ended else None,
            "price": None,
            "price_unit": "USD",
            "api_version": API_VERSION,
            "caller_name": None,
            "forwarded_from": None,
            "group_sid": None,
            "phone_number_sid": None,
            "queue_time": "0",
            "trunk_sid": None,
            "uri": uri,
            "subresource_uris": {"recordings": uri.replace(".json", "/Recordings.json")},
        }


class FakeTwilioApi:
    """The fake REST API server; use as an async context manager or ``start()``/``stop()``.

    Args:
        account_sid: The account whose calls it serves (basic-auth user).
        auth_token: The auth token (basic-auth password, and the key signing status callbacks).
        host: Interface to listen on.
        port: Port, 0 for any free one.
    """

    def __init__(self, account_sid: str, auth_token: str, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.account_sid, self.auth_token = account_sid, auth_token
        self.host, self.port = host, port
        self.requests: list[RecordedRequest] = []
        self.calls: dict[str, FakeCall] = {}
        self.errors: list[str] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._validator = RequestValidator(auth_token)
        self.failing_updates = 0  # this many next call updates are answered 503 (a Twilio outage)
        self._expected_auth = "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        verdicts.register(self)

    def sim_errors(self) -> list[str]:
        """Every request refused as the client's mistake so far."""
        return self.errors

    @property
    def base_url(self) -> str:
        """What to set as ``client.api.base_url``."""
        return f"http://{self.host}:{self.port}"

    @property
    def _base_path(self) -> str:
        return f"/{API_VERSION}/Accounts/{self.account_sid}"

    async def start(self) -> None:
        """Listen (on a free port when ``port`` is 0)."""
        app = web.Application(middlewares=[self._record_and_authenticate])
        calls = f"/{API_VERSION}/Accounts/{{account}}/Calls"
        app.router.add_post(f"{calls}.json", self._create)
        app.router.add_post(f"{calls}/{{sid}}.json", self._update)
        app.router.add_get(f"{calls}/{{sid}}.json", self._fetch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        """Stop listening and close the callback client."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTwilioApi:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @web.middleware
    async def _record_and_authenticate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        form = await request.post() if request.method == "POST" else {}
        self.requests.append(
            RecordedRequest(
                request.method,
                request.path,
                {k: [str(v) for v in form.getall(k)] for k in set(form)} if form else {},
            )
        )
        where = f"{request.method} {request.path}"
        if request.headers.get("Authorization") != self._expected_auth:
            self.errors.append(f"twilio api: {where}: bad credentials (401)")
            return _error(401, 20003, "Authentication Error - invalid username")
        if request.match_info.get("account") != self.account_sid:
            self.errors.append(f"twilio api: {where}: unknown account or resource (404)")
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        response = await handler(request)
        if response.status == 400:
            self.errors.append(f"twilio api: {where}: bad request (400): {getattr(response, 'text', '')}")
        return response

    async def _create(self, request: web.Request) -> web.Response:
        form = await request.post()
        if not form.get("To") or not form.get("From"):
            return _error(
                400,
                21201,
                "No 'To' number is specified" if not form.get("To") else "No 'From' number is specified",
            )
        if not form.get("Twiml") and not form.get("Url") and not form.get("ApplicationSid"):
            return _error(400, 21205, "Url parameter is required.")
        call = FakeCall(
            sid="CA" + secrets.token_hex(16),
            account_sid=self.account_sid,
            to=str(form["To"]),
            from_=str(form["From"]),
            twiml=_opt(form.get("Twiml")),
            url=_opt(form.get("Url")),
            status_callback=_opt(form.get("StatusCallback")),
            status_callback_event=[str(e) for e in form.getall("StatusCallbackEvent", [])],
            machine_detection=_opt(form.get("MachineDetection")),
            async_amd=_opt(form.get("AsyncAmd")),
        )
        self.calls[call.sid] = call
        return web.json_response(call.resource(self._base_path), status=201)

    def _known(self, sid: str) -> FakeCall | None:
        """A call of ``calls``, or one whose media stream is open (Twilio knows every call)."""
        if sid not in self.calls and (stream := open_call(sid)) is not None and stream.account_sid == self.account_sid:
            self.calls[sid] = FakeCall(sid=sid, account_sid=self.account_sid, to=stream.to, from_=stream.from_,
                                       direction="inbound", status="in-progress", started=datetime.now(UTC))  # fmt: skip
        return self.calls.get(sid)

    async def _update(self, request: web.Request) -> web.Response:
        call = self._known(request.match_info["sid"])
        if call is None:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        if self.failing_updates > 0:
            self.failing_updates -= 1
            return _error(503, 20503, "Service Unavailable")
        form = {k: str(v) for k, v in (await request.post()).items()}
        call.updates.append(form)
        if form.get("Status") in ("completed", "canceled"):
            call.status = form["Status"] if call.status not in _ENDED else call.status
            call.ended = call.ended or datetime.now(UTC)
        if "Twiml" in form:
            call.twiml, call.url = form["Twiml"], None
        if "Url" in form:
            call.url, call.twiml = form["Url"], None
        if "StatusCallback" in form:
            call.status_callback = form["StatusCallback"]
        if form.get("Status") in ("completed", "canceled") or "Twiml" in form or "Url" in form:
            if (stream := open_call(call.sid)) is not None:
                if form.get("Status") is None and (url := _stream_url(form.get("Twiml"))):
                    stream.moved_by_twilio(url)  # another <Connect><Stream>: a new stream follows
                else:
                    stream.stopped_by_twilio()  # the call left <Connect><Stream>: the stream ends
        return web.json_response(call.resource(self._base_path))

    async def _fetch(self, request: web.Request) -> web.Response:
        call = self._known(request.match_info["sid"])
        if call is None:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        return web.json_response(call.resource(self._base_path))

    def add_call(
        self,
        to: str,
        from_: str,
        *,
        direction: str = "inbound",
        status: str = "in-progress",
        status_callback: str | None = None,
    ) -> FakeCall:
        """Register a call Twilio would know without ``calls.create`` (e.g. an inbound call)."""
        call = FakeCall(
            sid="CA" + secrets.token_hex(16),
            account_sid=self.account_sid,
            to=to,
            from_=from_,
            direction=direction,
            status=status,
            status_callback=status_callback,
            started=datetime.now(UTC) if status == "in-progress" else None,
        )
        self.calls[call.sid] = call
        return call

    async def post_status(self, call_sid: str, status: str, **extra: str) -> int:
        """Send a signed status callback for ``call_sid`` to its ``StatusCallback`` URL.

        Args:
            call_sid: A call of ``calls``.
            status: The new CallStatus (initiated, ringing, in-progress, completed, busy, ...).
            **extra: More form fields, e.g. ``AnsweredBy="machine_start"``.

        Returns:
            The HTTP status our callback got back.

        Raises:
            KeyError: Unknown call; ValueError: the call has no status callback URL.
        """
        call = self.calls[call_sid]
        if not call.status_callback:
            raise ValueError(f"call {call_sid} has no StatusCallback URL")
        if self._session is None:
            raise RuntimeError("FakeTwilioApi is not started")
        now = datetime.now(UTC)
        if status == "in-progress" and call.started is None:
            call.started = now
        if status in _ENDED:
            call.ended = call.ended or now
        call.status = status
        call.sequence += 1
        if "AnsweredBy" in extra:
            call.answered_by = extra["AnsweredBy"]
        form = {
            "CallSid": call.sid,
            "AccountSid": self.account_sid,
            "CallStatus": status,
            "SequenceNumber": str(call.sequence - 1),  # Twilio counts callbacks from 0
            "Direction": call.direction,
            "From": call.from_,
            "To": call.to,
            "ApiVersion": API_VERSION,
            "Timestamp": format_datetime(now, usegmt=True),
            "CallbackSource": "call-progress-events",
            **({"CallDuration": str(call.duration_s)} if status == "completed" else {}),
            **extra,
        }
        signature = self._validator.compute_signature(call.status_callback, form)
        async with self._session.post(
            call.status_callback, data=form, headers={"X-Twilio-Signature": signature}
        ) as response:
            await response.read()
            call.callbacks.append((status, response.status))
            return response.status


def _stream_url(twiml: str | None) -> str | None:
    """The URL of the ``<Connect><Stream>`` in ``twiml``, if that is what it holds."""
    if not twiml:
        return None
    try:
        stream = ET.fromstring(twiml).find("./Connect/Stream")
    except ET.ParseError:
        return None
    return stream.get("url") if stream is not None else None


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


def _error(status: int, code: int, message: str) -> web.Response:
    """Twilio's legacy error body, which the SDK turns into ``TwilioRestException(code=...)``."""
    return web.json_response(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status=status,
    )
