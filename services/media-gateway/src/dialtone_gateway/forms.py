"""Twilio's webhook forms, read with bounds before anything parses them.

Starlette's ``request.form()`` reads the whole body (up to 1,000 fields of 1 MB each) before the
signature can be checked, so anyone could make the gateway buffer and parse hundreds of MB. Here
the body is refused unread when it declares more than ``limit`` bytes, cut off as soon as it
exceeds ``limit`` while streaming, refused when it trickles in slower than ``timeout``, and parsed
only then, with a cap on the number of fields. Twilio's webhooks are a few hundred bytes of
``application/x-www-form-urlencoded``.
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect, Request

MAX_FIELDS = 200


class BodyRejected(Exception):
    """A webhook body we will not parse. ``status`` is the HTTP answer, ``reason`` a metric label."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


async def read_form(request: Request, limit: int, timeout: float) -> dict[str, str]:  # noqa: ASYNC109
    """The webhook's form fields.

    Raises:
        BodyRejected: 415 (not a form), 413 (too large), 408 (too slow), 400 (not a valid form).
    """
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise BodyRejected(415, "content_type", "expected application/x-www-form-urlencoded")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BodyRejected(400, "bad_length", "invalid Content-Length")
        if int(declared) > limit:
            raise BodyRejected(413, "too_large", f"body over {limit} bytes")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise BodyRejected(413, "too_large", f"body over {limit} bytes")
    except TimeoutError:
        raise BodyRejected(408, "too_slow", f"body not received within {timeout:.0f} s") from None
    except ClientDisconnect:
        raise BodyRejected(400, "disconnected", "client went away mid-body") from None
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FIELDS, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise BodyRejected(400, "bad_form", f"not a valid form: {exc}") from None
    if any("\x00" in k or "\x00" in v for k, v in pairs):
        raise BodyRejected(400, "bad_form", "NUL byte in the form")
    return dict(pairs)
