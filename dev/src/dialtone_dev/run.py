"""``make run``: the whole platform on this machine, from nothing.

Embedded NATS and PostgreSQL when no URLs are set, migrations, the five services, and the Realtime
and GPT-Live simulators when ``OPENAI_API_KEY`` is unset (agents with ``engine = "live"`` talk to
the second). Writes ``.dialtone/run.json`` for ``make call``.
Ctrl-C stops everything in order.

The data directory is private (0700) and so are the two files in it that ``make call`` reads, from
the moment they exist (0600): ``secrets.json``, the development credentials generated once and
kept, and ``run.json``, where the running platform is. ``run.json`` names the admin token (the
banner prints it too) but never the Twilio auth token: ``make call`` signs with
``TWILIO_AUTH_TOKEN`` from its own environment, else with the development token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

from dialtone_dev.demo import scenario
from dialtone_dev.platform import Platform, Ports
from dialtone_dev.settings import DevSettings

RUN_FILE = "run.json"
SECRETS_FILE = "secrets.json"


def _secret(value) -> str | None:
    return value.get_secret_value() if value is not None else None


def private_data_dir(path: Path) -> Path:
    """Create the data directory (and its parents) for its owner only, or tighten an existing one."""
    path = path.resolve()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path``, readable by its owner only from the first byte.

    The file is created 0600 under a temporary name and renamed over ``path``, so an older file
    (perhaps world-readable) is replaced whole and a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def dev_secrets(data_dir: Path) -> dict[str, str]:
    """The development credentials kept in ``secrets.json``, generated on first use.

    They are kept so that ``make call`` and a dashboard tab keep working across restarts; real
    credentials come from the environment and are never written here."""
    path = data_dir / SECRETS_FILE
    saved = json.loads(path.read_text()) if path.exists() else {}
    fresh = dict(saved)
    fresh.setdefault("twilio_auth_token", secrets.token_hex(16))
    fresh.setdefault("twilio_account_sid", "AC" + secrets.token_hex(16))
    fresh.setdefault("admin_token", secrets.token_urlsafe(32))
    if fresh != saved or path.stat().st_mode & 0o077:
        write_private(path, fresh)
    return fresh


def _banner(p: Platform, simulated: bool) -> str:
    lines = [
        "",
        "=" * 72,
        "Dialtone is running.",
        f"  Twilio voice webhook : {p.public_base_url}/twilio-voice   (POST; status callbacks: /twilio-status)",
        f"  Dashboard            : {p.admin_url}/calls   (sign in with the admin token below; Live: /monitor)",
        f"  Admin API            : {p.admin_url}/sessions   (OpenAPI: {p.admin_url}/docs)",
        f"  Admin token          : {p.admin_token}",
        f"  Metrics              : gateway {p.gateway_url}/metrics, admin {p.admin_url}/metrics,"
        f" bridge :{p.ports.bridge}, tool-runner :{p.ports.tools}, writer :{p.ports.writer}",
        "  Place a test call    : make call",
        f"  Webhooks             : {p.webhook_url or 'none (set WEBHOOK_URL and WEBHOOK_SECRET)'}   (deliveries: {p.admin_url}/webhooks)",
    ]
    if p.nats_credentials is not None:
        lines.insert(-1, f"  NATS                 : {p.nats_url}   (a user per service; users and this run's passwords,"
                         f" dev-harness's too, in {p.data_dir / 'nats' / 'nats.conf'})")
    if simulated:
        lines += [
            "",
            "!" * 72,
            "!!  OPENAI_API_KEY is not set: calls talk to Dialtone's OpenAI Realtime (and GPT-Live) SIMULATOR,",
            "!!  a scripted stand-in, and post-call analyses to its Responses API SIMULATOR.",
            "!!  Set OPENAI_API_KEY to talk to the real models.",
            "!" * 72,
        ]
    lines.append("=" * 72)
    return "\n".join(lines)


async def run_platform() -> None:
    settings = DevSettings()
    data_dir = private_data_dir(settings.dialtone_data_dir)
    saved = dev_secrets(data_dir)

    api_key = _secret(settings.openai_api_key)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async with contextlib.AsyncExitStack() as stack:
        simulators: list[Any] = []  # the model simulators, which the test worker scripts per call
        realtime_url = settings.openai_realtime_url
        if not api_key and not realtime_url:
            from dialtone_sim.realtime import RealtimeSimulator

            sim = RealtimeSimulator(scenario(), port=settings.simulator_port, validate=True)
            await stack.enter_async_context(sim)
            simulators.append(sim)
            realtime_url = sim.url
            print(f"OpenAI Realtime simulator listening at {sim.url}", flush=True)
        live_url = settings.openai_live_url
        if not api_key and not live_url:
            from dialtone_sim.live import LiveSimulator

            live = LiveSimulator(scenario(), port=settings.live_simulator_port, validate=True)
            await stack.enter_async_context(live)
            simulators.append(live)
            live_url = live.url
            print(f"OpenAI GPT-Live simulator listening at {live.url}", flush=True)
        responses_url = None
        if not api_key:
            from dialtone_sim.responses_api import ResponsesSimulator

            responses = ResponsesSimulator(port=settings.responses_simulator_port)
            await stack.enter_async_context(responses)
            responses_url = responses.base_url
            print(f"OpenAI Responses API simulator (post-call analysis) listening at {responses_url}", flush=True)
        platform = Platform(
            data_dir=data_dir,
            ports=Ports(
                settings.gateway_port, settings.admin_port, settings.bridge_metrics_port,
                settings.tools_metrics_port, settings.writer_metrics_port,
            ),
            nats_url=settings.nats_url,
            database_url=settings.database_url,
            realtime_url=realtime_url,
            live_url=live_url,
            openai_api_key=api_key,
            twilio_auth_token=_secret(settings.twilio_auth_token) or saved["twilio_auth_token"],
            twilio_account_sid=settings.twilio_account_sid or saved["twilio_account_sid"],
            twilio_api_base_url=settings.twilio_api_base_url,
            admin_token=_secret(settings.admin_token) or saved["admin_token"],
            public_base_url=settings.public_base_url,
            webhook_url=settings.webhook_url,
            webhook_secret=_secret(settings.webhook_secret),
            responses_url=responses_url,
            echo=lambda line: print(line, flush=True),
            settings_from_environment=True,
        )
        await stack.enter_async_context(platform)
        from dialtone_dev.eval_worker import platform_worker

        # The dashboard's Tests page: its runs are placed by this worker (beside the simulators it
        # scripts per call when there is no key).
        await stack.enter_async_context(platform_worker(platform, simulators, api_key))
        write_private(
            data_dir / RUN_FILE,
            {
                "gateway_url": platform.gateway_url,
                "public_base_url": platform.public_base_url,
                "admin_url": platform.admin_url,
                "twilio_account_sid": platform.twilio_account_sid,
                # Which token signs: make call uses the same one (it cannot tell otherwise).
                "twilio_auth_token_from": "environment" if settings.twilio_auth_token else "development",
                "admin_token": platform.admin_token,
                "simulated": not api_key,
                "pid": os.getpid(),
            },
        )
        print(_banner(platform, simulated=not api_key), flush=True)
        await stop.wait()
        print("\nstopping Dialtone...", flush=True)
    with contextlib.suppress(OSError):
        (data_dir / RUN_FILE).unlink()
    print("stopped.", flush=True)


def main() -> None:
    try:
        asyncio.run(run_platform())
    except RuntimeError as exc:
        print(f"dialtone: {exc}", file=sys.stderr)
        sys.exit(1)
