"""``make run``: the whole platform on this machine, from nothing.

Embedded NATS and PostgreSQL when no URLs are set, migrations, the five services, and the Realtime
simulator when ``OPENAI_API_KEY`` is unset. Writes ``.dialtone/run.json`` for ``make call``.
Ctrl-C stops everything in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys

from dialtone_dev.demo import scenario
from dialtone_dev.platform import Platform, Ports
from dialtone_dev.settings import DevSettings


def _secret(value) -> str | None:
    return value.get_secret_value() if value is not None else None


def _banner(p: Platform, simulated: bool) -> str:
    lines = [
        "",
        "=" * 72,
        "Dialtone is running.",
        f"  Twilio voice webhook : {p.public_base_url}/twilio-voice   (POST; status callbacks: /twilio-status)",
        f"  Dashboard            : {p.admin_url}/",
        f"  Admin API            : {p.admin_url}/sessions   (OpenAPI: {p.admin_url}/docs)",
        f"  Admin token          : {p.admin_token}",
        f"  Metrics              : gateway {p.gateway_url}/metrics, admin {p.admin_url}/metrics,"
        f" bridge :{p.ports.bridge}, tool-runner :{p.ports.tools}, writer :{p.ports.writer}",
        "  Place a test call    : make call",
    ]
    if simulated:
        lines += [
            "",
            "!" * 72,
            "!!  OPENAI_API_KEY is not set: calls talk to Dialtone's OpenAI Realtime SIMULATOR,",
            "!!  a scripted stand-in. Set OPENAI_API_KEY to talk to the real model.",
            "!" * 72,
        ]
    lines.append("=" * 72)
    return "\n".join(lines)


async def run_platform() -> None:
    settings = DevSettings()
    data_dir = settings.dialtone_data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    saved_path = data_dir / "secrets.json"
    saved = json.loads(saved_path.read_text()) if saved_path.exists() else {}
    # Development credentials are generated once and kept, so make call and a browser tab keep working
    # across restarts. Real ones come from the environment.
    saved.setdefault("twilio_auth_token", secrets.token_hex(16))
    saved.setdefault("twilio_account_sid", "AC" + secrets.token_hex(16))
    saved.setdefault("admin_token", secrets.token_urlsafe(24))
    saved_path.write_text(json.dumps(saved))
    os.chmod(saved_path, 0o600)

    api_key = _secret(settings.openai_api_key)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async with contextlib.AsyncExitStack() as stack:
        realtime_url = settings.openai_realtime_url
        if not api_key and not realtime_url:
            from dialtone_sim.realtime import RealtimeSimulator

            sim = RealtimeSimulator(scenario(), port=settings.simulator_port, validate=True)
            await stack.enter_async_context(sim)
            realtime_url = sim.url
            print(f"OpenAI Realtime simulator listening at {sim.url}", flush=True)
        platform = Platform(
            data_dir=data_dir,
            ports=Ports(
                settings.gateway_port, settings.admin_port, settings.bridge_metrics_port,
                settings.tools_metrics_port, settings.writer_metrics_port,
            ),
            nats_url=settings.nats_url,
            database_url=settings.database_url,
            realtime_url=realtime_url,
            openai_api_key=api_key,
            twilio_auth_token=_secret(settings.twilio_auth_token) or saved["twilio_auth_token"],
            twilio_account_sid=settings.twilio_account_sid or saved["twilio_account_sid"],
            twilio_api_base_url=settings.twilio_api_base_url,
            admin_token=_secret(settings.admin_token) or saved["admin_token"],
            public_base_url=settings.public_base_url,
            echo=lambda line: print(line, flush=True),
        )
        await stack.enter_async_context(platform)
        (data_dir / "run.json").write_text(
            json.dumps(
                {
                    "gateway_url": platform.gateway_url,
                    "public_base_url": platform.public_base_url,
                    "admin_url": platform.admin_url,
                    "twilio_auth_token": platform.twilio_auth_token,
                    "twilio_account_sid": platform.twilio_account_sid,
                    "admin_token": platform.admin_token,
                    "simulated": not api_key,
                    "pid": os.getpid(),
                }
            )
        )
        print(_banner(platform, simulated=not api_key), flush=True)
        await stop.wait()
        print("\nstopping Dialtone...", flush=True)
    with contextlib.suppress(OSError):
        (data_dir / "run.json").unlink()
    print("stopped.", flush=True)


def main() -> None:
    try:
        asyncio.run(run_platform())
    except RuntimeError as exc:
        print(f"dialtone: {exc}", file=sys.stderr)
        sys.exit(1)
