"""The official Twilio REST client, async, as every service that calls Twilio builds it."""

from __future__ import annotations

import warnings
from typing import Any

from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client


class QuietAsyncHttpClient(AsyncTwilioHttpClient):
    """twilio-python 9.x passes ``aiohttp.BasicAuth`` as ``auth=``, which aiohttp 3.14 deprecates.

    The warnings are the SDK's to fix; they are silenced around its requests only, by message.
    """

    async def request(self, *args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "BasicAuth is deprecated", DeprecationWarning)
            warnings.filterwarnings("ignore", "The 'auth' parameter is deprecated", DeprecationWarning)
            return await super().request(*args, **kwargs)


def rest_client(account_sid: str, auth_token: str, base_url: str | None = None) -> tuple[Client, QuietAsyncHttpClient]:
    """A REST client on its own HTTP session (close the second value on shutdown). ``base_url``
    points it elsewhere than Twilio (``TWILIO_API_BASE_URL``: a local fake in tests)."""
    http = QuietAsyncHttpClient()
    client = Client(account_sid, auth_token, http_client=http)
    if base_url:
        client.api.base_url = base_url.rstrip("/")
    return client, http
