"""Start the media-gateway: ``python -m dialtone_gateway``."""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType

import uvicorn
from dialtone_common import logs
from fastapi import FastAPI

from dialtone_gateway.app import create_app, drain
from dialtone_gateway.settings import GatewaySettings

log = logging.getLogger("dialtone.gateway")


class DrainingServer(uvicorn.Server):
    """uvicorn, with a drain before its shutdown. uvicorn's own graceful shutdown closes every open
    WebSocket at once (1012), which would cut each caller off: here the first SIGTERM or SIGINT
    starts ``app.drain`` instead, and uvicorn shuts down when the drain is over. A second signal
    stops at once."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, grace: float) -> None:
        super().__init__(config)
        self.app, self.grace = app, grace
        self._drain_requested = False
        self._drain: asyncio.Task | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_requested or sig not in (signal.SIGTERM, signal.SIGINT):
            super().handle_exit(sig, frame)
        else:
            self._drain_requested = True  # a signal handler: the loop's next tick starts the drain

    async def on_tick(self, counter: int) -> bool:
        if self._drain_requested and self._drain is None:
            self._drain = asyncio.create_task(drain(self.app, self.grace), name="drain")
        if self._drain is not None and self._drain.done():
            self.should_exit = True
        return await super().on_tick(counter)


def main() -> None:
    settings = GatewaySettings()
    logs.setup(settings.log_level, "media-gateway")
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        # Twilio's messages are a few hundred bytes. Up to 4x max_message_bytes we refuse a message
        # ourselves (a log line, a metric, the call goes on); beyond that uvicorn closes the socket
        # (1009) before buffering more of it.
        ws_max_size=4 * settings.max_message_bytes,
        ws_ping_interval=None,
        # No permessage-deflate: Twilio's frames are base64 mu-law, which hardly compresses, and
        # compressing them cost about 5 % of the gateway's CPU per call where a client offered it.
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=10,
    )
    DrainingServer(config, app, settings.drain_grace_s).run()


if __name__ == "__main__":
    main()
