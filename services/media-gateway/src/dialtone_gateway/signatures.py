"""Twilio request signatures, checked with the official SDK's ``RequestValidator``, and the
per-call stream tokens that bind a media stream to its signed webhook.

URLs are built from the configured public base URL, never from request headers: behind a TLS
terminator or a tunnel the Host and scheme the server sees are not the ones Twilio signed.

Twilio signs the Media Streams upgrade over the stream URL alone. With one fixed URL every call's
upgrade signature would be the same, so anyone who saw one could open a stream for any call. The
TwiML therefore gives each call its own URL, ``/media/<CallSid>/<issued>/<token>``, where the token
is an HMAC of the CallSid and the time the URL was issued, under a key derived from the auth token:
only a signed webhook yields it, it names exactly one call, it expires (a captured upgrade cannot be
replayed later), and any gateway sharing the auth token can check it without shared state.

A draining gateway that moves a call issues ``/media/<CallSid>/<issued>/<move id>/<token>``, the
token then covering the move id too: the call record, ``moving``, names that move id, so only that
URL can take the call, and the webhook's URL (still within its time) cannot.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping

from twilio.request_validator import RequestValidator

TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{22,64}\Z")
_KEY_LABEL = b"dialtone media stream token v1"


class SignatureChecker:
    def __init__(self, auth_token: str, public_base_url: str, stream_base_url: str) -> None:
        self._validator = RequestValidator(auth_token)
        self._base = public_base_url.rstrip("/")
        self._stream_base = stream_base_url.rstrip("/")
        self._stream_key = hmac.new(auth_token.encode(), _KEY_LABEL, hashlib.sha256).digest()

    def webhook(self, path: str, params: Mapping[str, str], signature: str | None) -> bool:
        """A form POST from Twilio: URL plus sorted form parameters."""
        if not signature:
            return False
        return self._validator.validate(self._base + path, dict(params), signature)

    def stream_token(self, call_id: str, issued: int, move_id: str | None = None) -> str:
        """The token of ``call_id``'s stream URL issued at ``issued`` (Unix seconds), for the move
        ``move_id`` if any; 128 bits."""
        signed = f"{call_id}/{issued}" if move_id is None else f"{call_id}/{issued}/{move_id}"
        digest = hmac.new(self._stream_key, signed.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")

    def stream_path(self, call_id: str, issued: int, move_id: str | None = None) -> str:
        """``<CallSid>/<issued>/<token>`` (or ``<CallSid>/<issued>/<move id>/<token>``): the part of
        the stream URL after ``/media/``."""
        token = self.stream_token(call_id, issued, move_id)
        return f"{call_id}/{issued}/{token}" if move_id is None else f"{call_id}/{issued}/{move_id}/{token}"

    def token_matches(
        self, call_id: str, issued: str, token: str, *, now: float, ttl_s: float, move_id: str | None = None
    ) -> bool:
        """Whether ``token`` is ``call_id``'s for ``issued`` (and ``move_id``), and was issued
        within ``ttl_s`` (a little clock skew between gateways is allowed); compared in constant time."""
        if not (TOKEN_RE.match(token) and issued.isdigit() and len(issued) <= 12):
            return False
        if move_id is not None and not TOKEN_RE.match(move_id):
            return False
        if not -30 <= now - int(issued) <= ttl_s:
            return False
        return hmac.compare_digest(self.stream_token(call_id, int(issued), move_id), token)

    def media_socket(self, path: str, signature: str | None) -> bool:
        """The Media Streams upgrade: the call's own stream URL (``path`` after ``/media/``)."""
        if not signature:
            return False
        return self._validator.validate(f"{self._stream_base}/{path}", {}, signature)
