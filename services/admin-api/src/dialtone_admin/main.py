"""Start-up of the admin API: uvicorn serving ``create_app`` until SIGINT/SIGTERM."""

from __future__ import annotations

import uvicorn
from dialtone_common import logs

from dialtone_admin.app import create_app
from dialtone_admin.settings import AdminSettings


def main() -> None:
    """Entry point of ``python -m dialtone_admin``.

    uvicorn owns the signals here: on SIGTERM it stops accepting, finishes in-flight requests and
    runs the lifespan's shutdown (pool and NATS closed), the same order as ``runtime.run``.
    """
    settings = AdminSettings()
    logs.setup(settings.log_level, "admin-api")
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        # X-Forwarded-For/-Proto are believed only from the configured proxies (by default a proxy
        # on this machine, such as Caddy); from any other peer they are ignored, so a client
        # cannot pass itself off as another address in the logs.
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )
    uvicorn.Server(config).run()
