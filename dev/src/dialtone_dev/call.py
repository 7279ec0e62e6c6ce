"""``make call``: one simulated phone call through the running platform, then its session."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from dialtone_dev.demo import CALLER, CALLER_LINES, SUPPORT_NUMBER
from dialtone_dev.run import RUN_FILE, SECRETS_FILE
from dialtone_dev.settings import DevSettings


async def fetch_session(admin_url: str, token: str, call_sid: str, timeout: float = 20.0) -> dict[str, Any]:
    """Poll the admin API until the call's session is complete (ended and written)."""
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {token}"}
    last: dict[str, Any] = {}
    async with aiohttp.ClientSession(headers=headers) as http:
        while time.monotonic() < deadline:
            async with http.get(f"{admin_url}/sessions/{call_sid}") as r:
                if r.status == 200:
                    last = await r.json()
                    if last.get("ended_at"):
                        return last
            await asyncio.sleep(0.25)
    if last:
        return last
    raise RuntimeError(f"no session for {call_sid} after {timeout}s")


def format_session(session: dict[str, Any]) -> str:
    out = [
        f"Session {session['call_sid']}  agent={session.get('agent')}  outcome={session.get('outcome')}"
        f"  status={session.get('status')}",
        f"  {session.get('from_number')} -> {session.get('to_number')}  started {session.get('started_at')}"
        f"  ended {session.get('ended_at')}  cost ${float(session.get('cost_usd') or 0):.4f}",
        "  Transcript:",
    ]
    for line in session.get("transcript", []):
        who = "Caller" if line["role"] == "caller" else f"Agent ({line.get('agent')})"
        out.append(f"    {who:>16}: {line['text']}")
    if session.get("tool_calls"):
        out.append("  Tool calls:")
        for t in session["tool_calls"]:
            out.append(f"    {t['name']}({json.dumps(t.get('arguments'))}) -> {json.dumps(t.get('result'))[:160]}")
    return "\n".join(out)


def signing_token(settings: DevSettings, run: dict[str, Any]) -> str:
    """The Twilio auth token to sign the simulated call with: ``TWILIO_AUTH_TOKEN`` when set,
    else the development token ``make run`` generated."""
    if settings.twilio_auth_token is not None:
        return settings.twilio_auth_token.get_secret_value()
    if run.get("twilio_auth_token_from") == "environment":
        raise LookupError("the platform runs with TWILIO_AUTH_TOKEN from its environment: "
                          "set the same TWILIO_AUTH_TOKEN for make call")
    path = settings.dialtone_data_dir / SECRETS_FILE
    try:
        return json.loads(path.read_text())["twilio_auth_token"]
    except (OSError, ValueError, KeyError):
        raise LookupError(f"no development Twilio token in {path}: set TWILIO_AUTH_TOKEN") from None


async def place_call() -> int:
    from dialtone_sim.twilio_edge import WebhookRejected, place_scripted_call

    settings = DevSettings()
    run_file = settings.dialtone_data_dir / RUN_FILE
    if not run_file.exists():
        print(f"no running platform found ({run_file} missing): start it with `make run`", file=sys.stderr)
        return 1
    run = json.loads(Path(run_file).read_text())
    try:
        token = signing_token(settings, run)
    except LookupError as exc:
        print(f"make call: {exc}", file=sys.stderr)
        return 1
    print(f"calling {SUPPORT_NUMBER} from {CALLER} through {run['gateway_url']} ...", flush=True)
    try:
        call = await place_scripted_call(
            run["gateway_url"], token, CALLER_LINES,
            public_base_url=run["public_base_url"], account_sid=run["twilio_account_sid"],
            from_=CALLER, to=SUPPORT_NUMBER,
        )
    except WebhookRejected as exc:
        if exc.status != 403:
            raise
        print("make call: the gateway refused the call's signature: TWILIO_AUTH_TOKEN must be the token "
              "make run was started with (unset both to use the development token)", file=sys.stderr)
        return 1
    print(f"call {call.call_sid} finished: heard {len(call.heard) / 8000:.1f} s of agent audio", flush=True)
    session = await fetch_session(run["admin_url"], run["admin_token"], call.call_sid)
    print(format_session(session))
    return 0


def main() -> None:
    sys.exit(asyncio.run(place_call()))
