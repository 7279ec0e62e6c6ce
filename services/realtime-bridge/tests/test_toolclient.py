"""The bridge's tool client against a real NATS: a dead tool-runner fails fast, a restarting one is
waited for briefly, and a runner that dies mid-call is noticed long before the tool's timeout."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import orjson
import pytest
from dialtone_bridge import toolclient
from dialtone_bridge.toolclient import ToolClient
from dialtone_proto import ToolCallRequest
from dialtone_tools.service import ToolRunner
from dialtone_tools.settings import ToolSettings
from nats.aio.client import Client

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
TOOLS = '''
import asyncio
from dialtone_tools import tool

@tool(timeout_s=30)
async def slow_echo(n: int, delay: float = 0.0) -> int:
    """Answer n after a while."""
    await asyncio.sleep(delay)
    return n
'''
TIMEOUT_S = 8.0  # the tool's timeout as the bridge knows it: before, a dead runner meant 9 s of silence


@pytest.fixture
def tools_module(tmp_path: Path) -> str:
    path = tmp_path / "toolclient_tools.py"
    path.write_text(TOOLS)
    return str(path)


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


def request(n: int, delay: float = 0.0) -> ToolCallRequest:
    return ToolCallRequest(call_id="CAtoolclient", tool_call_id=f"tc-{n}", name="slow_echo",
                           arguments=f'{{"n": {n}, "delay": {delay}}}', agent="default")


async def timed(client: ToolClient, req: ToolCallRequest) -> tuple[float, object]:
    started = time.monotonic()
    reply = await client.call(req, TIMEOUT_S)
    return time.monotonic() - started, reply


async def test_a_call_with_no_runner_fails_in_about_a_second(nc: Client) -> None:
    elapsed, reply = await timed(ToolClient(nc, TIMEOUT_S), request(1))
    assert not reply.ok and reply.output == {"error": "no tool-runner is available"}
    assert elapsed < 1.5, f"the caller waited {elapsed:.1f} s"


async def test_arguments_too_large_for_nats_are_an_error_reply(nc: Client) -> None:
    req = ToolCallRequest(call_id="CAtoolclient", tool_call_id="tc-big", name="slow_echo",
                          arguments='{"pad": "' + "x" * nc.max_payload + '"}', agent="default")
    reply = await ToolClient(nc, TIMEOUT_S).call(req, TIMEOUT_S)
    assert not reply.ok and "too large to send" in reply.output["error"]


async def test_a_runner_that_starts_just_after_the_request_serves_it(nc: Client, nats_url: str,
                                                                     tools_module: str) -> None:
    runner = ToolRunner(ToolSettings(nats_url=nats_url, instance_id="late", metrics_port=0, tools_module=tools_module))
    client = ToolClient(nc, TIMEOUT_S)
    pending = asyncio.create_task(client.call(request(2), TIMEOUT_S))
    await asyncio.sleep(0.5)  # the runner (re)starts half a second after the request went out
    async with runner:
        reply = await pending
    assert reply.ok and reply.output == 2 and reply.runner_id == "late"


async def test_a_slow_tool_on_a_live_runner_is_waited_for(nc: Client, nats_url: str, tools_module: str) -> None:
    settings = ToolSettings(nats_url=nats_url, instance_id="slow", metrics_port=0, tools_module=tools_module)
    async with ToolRunner(settings):
        reply = await ToolClient(nc, TIMEOUT_S).call(request(3, delay=2.5), TIMEOUT_S)
    assert reply.ok and reply.output == 3


async def test_a_runner_killed_mid_call_is_noticed_long_before_the_timeout(nc: Client, nats_url: str,
                                                                           tools_module: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env |= {"NATS_URL": nats_url, "TOOLS_MODULE": tools_module, "INSTANCE_ID": "doomed", "METRICS_PORT": "0"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "dialtone_tools", env=env, cwd=REPO,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        client = ToolClient(nc, TIMEOUT_S)
        deadline = time.monotonic() + 30
        while "slow_echo" not in await client.catalog():  # the subprocess takes a moment to start
            assert proc.returncode is None and time.monotonic() < deadline, "the runner did not start"
            await asyncio.sleep(0.05)
        pending = asyncio.create_task(timed(client, request(4, delay=20)))
        # kill -9 once the call is running there (the runner's nats.micro STATS count it)
        while not await _call_received(nc):
            assert not pending.done() and time.monotonic() < deadline
            await asyncio.sleep(0.01)
        killed = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        elapsed, reply = await pending
        noticed = time.monotonic() - killed
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    assert not reply.ok and "tool-runner stopped" in reply.output["error"], reply
    assert noticed < 2.5 and elapsed < TIMEOUT_S, f"noticed {noticed:.1f} s after the kill, {elapsed:.1f} s in all"


async def _call_received(nc: Client) -> bool:
    """Whether the runner reports a request on its call endpoint (nats.micro STATS)."""
    msg = await nc.request("$SRV.STATS.dialtone-tools", b"", timeout=2)
    stats = orjson.loads(msg.data)
    return any(e["name"] == "call" and e["num_requests"] > 0 for e in stats["endpoints"])


async def test_a_runner_stopping_gracefully_mid_call_still_answers(nc: Client, nats_url: str,
                                                                   tools_module: str) -> None:
    runner = ToolRunner(ToolSettings(nats_url=nats_url, instance_id="leaving", metrics_port=0,
                                     tools_module=tools_module))
    await runner.__aenter__()
    pending = asyncio.create_task(ToolClient(nc, TIMEOUT_S).call(request(5, delay=2.5), TIMEOUT_S))
    deadline = time.monotonic() + 10
    while not runner.service.in_flight:
        assert time.monotonic() < deadline and not pending.done()
        await asyncio.sleep(0.01)
    await runner.__aexit__(None, None, None)  # drains: the call in flight is answered first
    reply = await pending
    assert reply.ok and reply.output == 5 and reply.runner_id == "leaving", reply


async def test_a_stale_catalog_is_kept_after_about_a_second_without_a_runner(
    nc: Client, nats_url: str, tools_module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = ToolClient(nc, TIMEOUT_S)
    settings = ToolSettings(nats_url=nats_url, instance_id="gone", metrics_port=0, tools_module=tools_module)
    async with ToolRunner(settings):
        assert "slow_echo" in await client.catalog()
    monkeypatch.setattr(toolclient, "CATALOG_TTL_S", 0.0)  # the cached catalog is due for a refresh
    started = time.monotonic()
    assert "slow_echo" in await client.catalog()  # calls starting now still get their tools
    assert time.monotonic() - started < 1.5
