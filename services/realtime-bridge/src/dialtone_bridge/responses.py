"""Which model response is running, and the ones we asked for that must wait their turn.

The server starts responses on its own (server VAD) while we ask for others (a greeting, the
answer after a tool, a goodbye, a filler). Only one response runs at a time, so a request made
while one runs waits in a queue, and a request the server refuses because it raced a VAD response
(``conversation_already_has_active_response``) goes back to the front of that queue. Every request
carries its own ``event_id`` so a refusal can be matched to it, and each response remembers which
request (and so which purpose) started it: the goodbye is the response started for the goodbye.
A response that fails is asked for again once (:meth:`Request.retry`); see ``conversation.py``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

Purpose = Literal["reply", "greeting", "prompt", "goodbye", "filler", "apology"]
RACE = "conversation_already_has_active_response"
PENDING = "pending"  # asked for, not yet named by response.created


@dataclass(eq=False)
class Request:
    instructions: str | None = None
    purpose: Purpose = "reply"
    force: bool = False  # still asked for once the call is winding down (the goodbye itself)
    retried: bool = False  # asked for again after its response failed

    def retry(self) -> Request:
        """The same request, asked for a second time."""
        return Request(self.instructions, self.purpose, self.force, retried=True)

    @property
    def out_of_band(self) -> bool:
        """A filler is heard but stays out of the conversation the model remembers."""
        return self.purpose == "filler"


class Responses:
    def __init__(self) -> None:
        self.active: str | None = None  # response id, PENDING, or None
        self.queue: deque[Request] = deque()
        self._sent: dict[str, Request] = {}  # event_id -> request
        self._awaiting: Request | None = None  # sent, waiting for its response.created
        self._by_response: dict[str, Request] = {}
        self._n = 0

    def sending(self, request: Request) -> str:
        """Record a request about to be sent; returns its event id."""
        self._n += 1
        event_id = f"dt_req_{self._n}"
        self._sent[event_id] = request
        self._awaiting = request
        self.active = PENDING
        return event_id

    def send_failed(self, event_id: str) -> None:
        request = self._sent.pop(event_id, None)
        if request is not None and self._awaiting is request:
            self._awaiting = None
        if self.active == PENDING:
            self.active = None

    def created(self, response_id: str) -> None:
        self.active = response_id
        if self._awaiting is not None:
            self._by_response[response_id] = self._awaiting
            self._awaiting = None

    def purpose_of(self, response_id: str) -> Purpose:
        request = self._by_response.get(response_id)
        return request.purpose if request else "reply"

    def done(self, response_id: str) -> Request | None:
        """The response finished; returns the request that started it (None: the server's own)."""
        if self.active in (response_id, PENDING):
            self.active = None
        return self._by_response.pop(response_id, None)

    def refused(self, event_id: str | None, code: str) -> bool:
        """The server refused a request. A race puts it back in front of the queue; any other
        refusal drops it. Returns whether the error was about one of our requests."""
        request = self._sent.pop(event_id, None) if event_id else None
        if request is None:
            return False
        if self._awaiting is request:
            self._awaiting = None
        for response_id, started in list(self._by_response.items()):
            if started is request:  # a racing VAD response was taken for ours
                del self._by_response[response_id]
        if self.active == PENDING:
            self.active = None
        if code == RACE:
            self.queue.appendleft(request)
        return True

    def reset(self) -> None:
        """A new socket: nothing is running on it."""
        self.active = None
        self._awaiting = None
        self._by_response.clear()
        self._sent.clear()
