"""Twilio request signatures, checked with the official SDK's ``RequestValidator``.

URLs are built from the configured public base URL, never from request headers: behind a TLS
terminator or a tunnel the Host and scheme the server sees are not the ones Twilio signed.
"""

from __future__ import annotations

from collections.abc import Mapping

from twilio.request_validator import RequestValidator


class SignatureChecker:
    def __init__(self, auth_token: str, public_base_url: str, stream_url: str) -> None:
        self._validator = RequestValidator(auth_token)
        self._base = public_base_url.rstrip("/")
        self._stream_url = stream_url

    def webhook(self, path: str, params: Mapping[str, str], signature: str | None) -> bool:
        """A form POST from Twilio: URL plus sorted form parameters."""
        if not signature:
            return False
        return self._validator.validate(self._base + path, dict(params), signature)

    def media_socket(self, signature: str | None) -> bool:
        """The Media Streams WebSocket upgrade: the stream URL with no parameters."""
        if not signature:
            return False
        return self._validator.validate(self._stream_url, {}, signature)
