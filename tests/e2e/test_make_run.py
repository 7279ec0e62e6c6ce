"""Acceptance: ``make run`` works from nothing (no NATS_URL, DATABASE_URL or API key) and
``make call`` against it prints a transcript; Ctrl-C stops it all cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
from pathlib import Path

import pytest
from dialtone_common.embedded import free_port

from .conftest import poll

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

ROOT = Path(__file__).resolve().parents[2]


async def test_make_run_then_make_call_prints_a_transcript(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL", "OPENAI_API_KEY",
                                                            "TWILIO_AUTH_TOKEN", "ADMIN_TOKEN", "MAKEFLAGS")}
    env |= {
        "DIALTONE_DATA_DIR": str(tmp_path / "dialtone"),
        "GATEWAY_PORT": str(free_port()), "ADMIN_PORT": str(free_port()), "SIMULATOR_PORT": str(free_port()), "LIVE_SIMULATOR_PORT": str(free_port()),
        "RESPONSES_SIMULATOR_PORT": str(free_port()),
        "BRIDGE_METRICS_PORT": str(free_port()), "TOOLS_METRICS_PORT": str(free_port()),
        "WRITER_METRICS_PORT": str(free_port()),
    }
    run = await asyncio.create_subprocess_exec(
        "make", "-s", "run", cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    output: list[str] = []

    async def pump() -> None:
        assert run.stdout is not None
        async for line in run.stdout:
            output.append(line.decode(errors="replace"))

    reader = asyncio.create_task(pump())
    run_file = tmp_path / "dialtone" / "run.json"
    try:
        await poll(lambda: run_file.exists() or run.returncode is not None, timeout=120, what="make run to start")
        assert run.returncode is None, "".join(output[-40:])
        # run.json is written just before the banner is printed, which then comes through a pipe.
        await poll(lambda: "Set OPENAI_API_KEY to talk to the real model" in "".join(output) or run.returncode is not None,
                   timeout=30, what="the banner")
        banner = "".join(output)
        info = json.loads(run_file.read_text())
        assert f"{info['public_base_url']}/twilio-voice" in banner
        assert f"{info['admin_url']}/" in banner and info["admin_token"] in banner
        assert "SIMULATOR" in banner
        # The data directory stays private to its owner with the embedded servers running in it,
        # and NATS's users' passwords (drawn for this run) are in its 0600 configuration only.
        data = tmp_path / "dialtone"
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        conf = data / "nats" / "nats.conf"
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600 and stat.S_IMODE(conf.parent.stat().st_mode) == 0o700
        passwords = re.findall(r'password: "([^"]+)"', conf.read_text())
        assert len(passwords) == 7  # the five services' users, the test worker's and dev-harness
        assert "Responses API simulator" in banner

        call = await asyncio.create_subprocess_exec(
            "make", "-s", "call", cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(call.communicate(), 120)
        text = out.decode()
        assert call.returncode == 0, text
        assert "Transcript:" in text
        assert "Caller: Hi, I'd like to check on my account please." in text
        assert "Agent (support): Thanks for calling Acme support" in text
        assert "lookup_customer" in text and "outcome=resolved" in text
    finally:
        if run.returncode is None:
            os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C does in a terminal
        code = await asyncio.wait_for(run.wait(), 60)
        await reader
    text = "".join(output)
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "dialtone" / "logs").glob("*.log"))
    assert not [p for p in passwords if p in text or p in logs], "a NATS password was printed or logged"
    assert stat.S_IMODE((tmp_path / "dialtone").stat().st_mode) == 0o700
    # make itself reports the interrupt (its exit code is the signal's); the platform must stop cleanly.
    assert "stopped." in text and "Traceback" not in text, text[-3000:]
    assert code in (0, 2, -signal.SIGINT), text[-3000:]
