"""``dialtone eval-worker``'s main: the Tests page's worker as a process of its own, for deployments.

``make run`` and the tests run :class:`~dialtone_dev.eval_worker.EvalWorker` in-process, beside the
model simulators it sets each scenario's ``model`` script on. A deployment has no simulators to
script: with ``OPENAI_API_KEY`` the real model answers, which is what testing an agent is for. So
this process is the same worker with no simulators, configured from the environment like the five
services (``NATS_URL``, ``NATS_USER=eval`` / ``NATS_PASSWORD``, ``DATABASE_URL``), plus where to
dial (``GATEWAY_URL``, signed for ``PUBLIC_BASE_URL`` with ``TWILIO_AUTH_TOKEN``, exactly as Twilio
signs) and where to read the calls back (``ADMIN_URL``, ``ADMIN_TOKEN``).

It refuses to start when one of those is missing. Without a key it starts, but says loudly that
whatever model the platform's bridge talks to answers unscripted: a scenario's ``model`` block is
not followed, so offline runs belong to ``make run``'s in-process worker.

``/healthz`` (on ``METRICS_HOST``:``METRICS_PORT``) is 503 while NATS is away; ``/metrics`` counts
the test calls it placed by verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

from dialtone_common import bus
from dialtone_common.health import HealthServer
from dialtone_common.logs import setup
from dialtone_common.runtime import run
from pydantic import ValidationError

from dialtone_dev.eval_runner import EvalOptions, Target
from dialtone_dev.eval_service.metrics import EVAL_CALLS, REGISTRY
from dialtone_dev.eval_worker import EvalWorker
from dialtone_dev.settings import EvalWorkerSettings

__all__ = ["NO_KEY_BANNER", "main", "options_from", "target_from"]

log = logging.getLogger(__name__)

NO_KEY_BANNER = "\n".join([
    "!" * 72,
    "!!  OPENAI_API_KEY is not set. This worker cannot script Dialtone's model simulators: whatever",
    "!!  model the platform's bridge talks to answers each test call unscripted, and a scenario's",
    "!!  `model` block is ignored. Offline test runs need `make run`'s in-process worker; set",
    "!!  OPENAI_API_KEY to test your agent's real model (persona callers and judged criteria too).",
    "!" * 72,
])  # fmt: skip


def target_from(settings: EvalWorkerSettings) -> Target:
    assert settings.gateway_url and settings.public_base_url and settings.admin_url
    assert settings.admin_token is not None and settings.twilio_auth_token is not None
    return Target(settings.gateway_url.rstrip("/"), settings.public_base_url.rstrip("/"),
                  settings.admin_url.rstrip("/"), settings.admin_token.get_secret_value(),
                  settings.twilio_auth_token.get_secret_value(), settings.twilio_account_sid, None)  # fmt: skip


def options_from(settings: EvalWorkerSettings) -> EvalOptions:
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    return EvalOptions(agents_dir=settings.agents_dir, openai_api_key=key or None,
                       openai_base_url=settings.openai_base_url, eval_model=settings.eval_model,
                       tts_voice=settings.eval_tts_voice)  # fmt: skip


def load_settings() -> EvalWorkerSettings:
    """The settings, or exit 2 with what is wrong (never a traceback, never a secret)."""
    try:
        settings = EvalWorkerSettings()
    except ValidationError as exc:
        problems = "; ".join(": ".join(filter(None, (".".join(map(str, e["loc"])).upper(), e["msg"])))
                             for e in exc.errors())  # fmt: skip
        print(f"dialtone eval-worker: invalid settings: {problems}", file=sys.stderr)
        sys.exit(2)
    if missing := settings.missing():
        print("dialtone eval-worker: missing settings: " + ", ".join(missing)
              + " (the README's configuration table says what each is)", file=sys.stderr)  # fmt: skip
        sys.exit(2)
    if not settings.agents_dir.is_dir():
        print(f"dialtone eval-worker: AGENTS_DIR {settings.agents_dir} is not a directory", file=sys.stderr)
        sys.exit(2)
    return settings


def main() -> None:
    settings = load_settings()
    setup(settings.log_level, "eval-worker")
    if not settings.openai_api_key or not settings.openai_api_key.get_secret_value():
        print(NO_KEY_BANNER, file=sys.stderr, flush=True)
        log.warning("OPENAI_API_KEY is not set: test calls are answered unscripted (see the banner above)")

    async def serve(stack: contextlib.AsyncExitStack, stop: asyncio.Event) -> None:
        nc = await bus.connect(settings.nats_servers(), f"eval-worker-{settings.instance_id or 'main'}",
                               **settings.nats_credentials())  # fmt: skip
        stack.push_async_callback(nc.drain)
        assert settings.database_url is not None
        worker = EvalWorker(nc, settings.database_url, target_from(settings), options_from(settings),
                            on_result=lambda r: EVAL_CALLS.labels("passed" if r.passed else "failed").inc())  # fmt: skip
        await stack.enter_async_context(worker)
        await stack.enter_async_context(HealthServer(
            settings.metrics_host, settings.metrics_port,
            lambda: None if nc.is_connected else "NATS is away", registry=REGISTRY,
        ))  # fmt: skip
        log.info("test worker ready: calls go to %s, results are read from %s", settings.gateway_url, settings.admin_url)

    run(serve)
