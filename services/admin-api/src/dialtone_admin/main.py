"""Start-up of the admin API: uvicorn serving ``create_app`` until SIGINT/SIGTERM."""

from __future__ import annotations

import sys

import uvicorn
from dialtone_common import logs
from pydantic import ValidationError

from dialtone_admin.app import create_app
from dialtone_admin.settings import AdminSettings


def main() -> None:
    """Entry point of ``python -m dialtone_admin``.

    uvicorn owns the signals here: on SIGTERM it stops accepting, finishes in-flight requests and
    runs the lifespan's shutdown (pool and NATS closed), the same order as ``runtime.run``.
    """
    try:
        settings = AdminSettings()
    except ValidationError as exc:  # say what is wrong and how to fix it, not a traceback
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])).upper() or 'settings'}: {e['msg']}" for e in exc.errors())
        print(f"admin-api: cannot start: {problems}", file=sys.stderr)
        raise SystemExit(2) from None
    logs.setup(settings.log_level, "admin-api")
    uvicorn.Server(server_config(settings)).run()


def server_config(settings: AdminSettings) -> uvicorn.Config:
    """uvicorn serving the app as configured: its address, and which proxies' forwarded headers count."""
    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        # X-Forwarded-For/-Proto are believed only from the configured proxies (by default a proxy
        # on this machine, such as Caddy; behind a Kubernetes ingress, the ingress controller's
        # network): from any other peer they are ignored, so a client can pass itself off neither
        # as another address (in the logs and the guessing throttle) nor as HTTPS.
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )
