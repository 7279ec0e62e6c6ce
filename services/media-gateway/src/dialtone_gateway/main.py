"""Start the media-gateway: ``python -m dialtone_gateway``."""

from __future__ import annotations

import uvicorn
from dialtone_common import logs

from dialtone_gateway.app import create_app
from dialtone_gateway.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    logs.setup(settings.log_level, "media-gateway")
    # uvicorn owns the signals here: SIGTERM stops accepting, lets open sockets finish their
    # close, then runs the lifespan shutdown which drains NATS.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        # Twilio's messages are a few hundred bytes. Up to 4x max_message_bytes we refuse a message
        # ourselves (a log line, a metric, the call goes on); beyond that uvicorn closes the socket
        # (1009) before buffering more of it.
        ws_max_size=4 * settings.max_message_bytes,
        ws_ping_interval=None,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
