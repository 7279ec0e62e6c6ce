"""Twilio request signatures, checked with the official SDK's ``RequestValidator``, and the
per-call stream tokens that bind a media stream to its signed webhook.

URLs are built from the configured public base URL, never from request headers: behind a TLS
terminator or a tunnel the Host and scheme the server sees are not the ones Twilio signed.

Twilio signs the Media Streams upgrade over the stream URL alone. With one fixed URL every call's
upgrade signature would be the same, so anyone who saw one could open a stream for any call. The
TwiML therefore gives each call its own URL, ``/media/<CallSid>/<token>``, where the token is an
HMAC of the CallSid under a key derived from the auth token: only a signed webhook yields it, it
names exactly one call, and any gateway sharing the token can check it without shared state.
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

    def stream_token(self, call_id: str) -> str:
        """The token of ``call_id``'s stream URL (128 bits, URL-safe)."""
        digest = hmac.new(self._stream_key, call_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")

    def token_matches(self, call_id: str, token: str) -> bool:
        """Whether ``token`` is ``call_id``'s, compared in constant time."""
        return bool(TOKEN_RE.match(token)) and hmac.compare_digest(self.stream_token(call_id), token)

    def media_socket(self, call_id: str, token: str, signature: str | None) -> bool:
        """The Media Streams upgrade: the call's own stream URL, with no parameters."""
        if not signature:
            return False
        return self._validator.validate(f"{self._stream_base}/{call_id}/{token}", {}, signature)
