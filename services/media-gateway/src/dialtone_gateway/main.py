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
        ws_max_size=4 * 1024 * 1024,  # we refuse oversize messages ourselves, with a log line and a metric
        ws_ping_interval=None,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
