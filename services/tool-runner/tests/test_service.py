"""The runner over real NATS and PostgreSQL: catalog, calls, load sharing and graceful stop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import orjson
import pytest
from dialtone_proto import ToolCallReply, ToolCallRequest, ToolCatalog, subjects
from dialtone_tools.service import ToolRunner
from dialtone_tools.settings import ToolSettings
from nats.aio.client import Client
from nats.errors import NoRespondersError

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
EXAMPLE_TOOLS = str(REPO / "examples" / "tools.py")
SLOW_TOOLS = '''
import asyncio
from dialtone_tools import tool

@tool
async def slow_echo(n: int, delay: float = 0.2) -> int:
    """Answer n after a while."""
    await asyncio.sleep(delay)
    return n
'''


async def poll(check: Callable[[], Awaitable[bool] | bool], what: str, within: float = 10.0) -> None:
    """Wait until ``check()`` is true, or fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def settings(nats_url: str, runner_id: str, tools_module: str, database_url: str | None = None) -> ToolSettings:
    return ToolSettings(nats_url=nats_url, instance_id=runner_id, metrics_port=0, metrics_host="127.0.0.1",
                        tools_module=tools_module, database_url=database_url)


@pytest.fixture
async def client(nats_url: str) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_url)
    yield nc
    await nc.close()


async def call(nc: Client, name: str, arguments: dict, *, call_id: str = "CAtest", wait_s: float = 5.0,
               **extra) -> ToolCallReply:
    """One tool call as the bridge makes it; retried once if no runner is subscribed at that instant."""
    request = ToolCallRequest(call_id=call_id, tool_call_id=f"tc-{name}", name=name,
                              arguments=orjson.dumps(arguments).decode(), agent="default", **extra)
    data = request.model_dump_json().encode()
    try:
        msg = await nc.request(subjects.TOOLS_CALL, data, timeout=wait_s)
    except NoRespondersError:
        msg = await nc.request(subjects.TOOLS_CALL, data, timeout=wait_s)
    return ToolCallReply.model_validate_json(msg.data)


@pytest.fixture
def slow_tools(tmp_path: Path) -> str:
    path = tmp_path / "slow_tools.py"
    path.write_text(SLOW_TOOLS)
    return str(path)


async def test_catalog_and_calls_over_nats(nats_url: str, database_url: str, client: Client) -> None:
    async with ToolRunner(settings(nats_url, "runner-a", EXAMPLE_TOOLS, database_url)) as runner:
        msg = await client.request(subjects.TOOLS_CATALOG, b"", timeout=5)
        catalog = ToolCatalog.model_validate_json(msg.data)
        names = [t.name for t in catalog.tools]
        assert names == ["set_outcome", "end_call", "transfer_call", "handoff", "lookup_customer",
                         "check_order_status"]

        ada = await call(client, "lookup_customer", {"phone": "+15005550001"})
        assert ada.ok and ada.runner_id == "runner-a", ada
        assert ada.output["name"] == "Ada Lovelace" and ada.output["plan"] == "pro"
        assert ada.output["last_order"]["order_id"] == "A1002"
        assert (await call(client, "lookup_customer", {"phone": "+19999999999"})).output == {"found": False}

        order = await call(client, "check_order_status", {"order_id": "a1002"}, from_number="+15005550001")
        assert order.ok and order.output["status"] == "shipped"
        bad = await call(client, "check_order_status", {"order_id": "nope"})
        assert not bad.ok and "invalid arguments: order_id" in bad.output["error"]

        ended = await call(client, "end_call", {"reason": "bye"})
        assert [a.action for a in ended.actions] == ["end_call"]

        # A request that is not a ToolCallRequest is a service error, not a tool failure.
        msg = await client.request(subjects.TOOLS_CALL, b'{"name": "x"}', timeout=5)
        assert msg.headers and msg.headers["Nats-Service-Error-Code"] == "400"

        # nats.micro discovery works, and /metrics counts the calls.
        info = await client.request(f"$SRV.INFO.{subjects.TOOLS_SERVICE}", b"", timeout=5)
        endpoints = {e["name"]: e for e in orjson.loads(info.data)["endpoints"]}
        assert endpoints["call"]["subject"] == subjects.TOOLS_CALL
        assert endpoints["call"]["queue_group"] == "dialtone-tools"
        reader, writer = await asyncio.open_connection("127.0.0.1", runner.health.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        body = (await reader.read()).decode()
        writer.close()
        assert 'dialtone_tool_calls_total{result="ok",tool="lookup_customer"}' in body


async def test_setup_hook_is_idempotent(nats_url: str, database_url: str) -> None:
    async with ToolRunner(settings(nats_url, "runner-a", EXAMPLE_TOOLS, database_url)) as runner:
        await runner.database.execute("SELECT 1")
    async with ToolRunner(settings(nats_url, "runner-b", EXAMPLE_TOOLS, database_url)) as runner:
        count = await runner.database.fetchval("SELECT count(*) FROM customers WHERE phone = '+15005550001'")
        assert count == 1


async def test_two_runners_share_the_load(nats_url: str, client: Client, slow_tools: str) -> None:
    async with (ToolRunner(settings(nats_url, "share-a", slow_tools)),
                ToolRunner(settings(nats_url, "share-b", slow_tools))):
        replies = await asyncio.gather(*(call(client, "slow_echo", {"n": i, "delay": 0.01}) for i in range(60)))
    assert [r.output for r in replies] == list(range(60))
    assert {r.runner_id for r in replies} == {"share-a", "share-b"}


async def test_stopping_a_runner_mid_run_loses_no_request(nats_url: str, client: Client, slow_tools: str) -> None:
    runner_a = ToolRunner(settings(nats_url, "stop-a", slow_tools))
    async with ToolRunner(settings(nats_url, "stop-b", slow_tools)):
        await runner_a.__aenter__()
        results: dict[int, ToolCallReply] = {}

        async def one(i: int) -> None:
            results[i] = await call(client, "slow_echo", {"n": i, "delay": 0.3})

        async with asyncio.TaskGroup() as group:
            for i in range(40):  # a first wave, so both runners have calls in flight
                group.create_task(one(i))
            await poll(lambda: runner_a.service.in_flight > 0, "runner A to have calls in flight")
            stopping = group.create_task(runner_a.__aexit__(None, None, None))
            for i in range(40, 120):  # and requests keep coming while A stops
                group.create_task(one(i))
                await asyncio.sleep(0.005)  # paces the load; not used to wait for any state
        assert stopping.done()
    assert sorted(results) == list(range(120))
    assert all(r.ok and r.output == i for i, r in results.items())
    answered_by = {r.runner_id for r in results.values()}
    assert answered_by == {"stop-a", "stop-b"}
    assert all(results[i].runner_id == "stop-b" for i in range(100, 120))  # A is gone by then


async def test_subprocess_runner_drains_on_sigterm(nats_url: str, client: Client, slow_tools: str) -> None:
    env = {**os.environ, "NATS_URL": nats_url, "TOOLS_MODULE": slow_tools, "INSTANCE_ID": "sub-1",
           "METRICS_PORT": "0", "METRICS_HOST": "127.0.0.1"}
    env.pop("DATABASE_URL", None)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "dialtone_tools", env=env, cwd=REPO,
                                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    try:
        async def answers() -> bool:
            try:
                msg = await client.request(subjects.TOOLS_CATALOG, b"", timeout=0.5)
            except (NoRespondersError, nats.errors.TimeoutError):
                return proc.returncode is not None  # stop polling if it died; asserted below
            return "slow_echo" in msg.data.decode()

        await poll(answers, "the subprocess runner to serve its catalog", within=30)
        assert proc.returncode is None, (await proc.stdout.read()).decode()
        in_flight = asyncio.create_task(call(client, "slow_echo", {"n": 7, "delay": 1.0}))
        await poll(lambda: _call_received(client), "the call to reach the runner")
        proc.send_signal(signal.SIGTERM)
        reply = await in_flight
        assert reply.ok and reply.output == 7 and reply.runner_id == "sub-1"
        output = (await asyncio.wait_for(proc.stdout.read(), 20)).decode()
        assert await asyncio.wait_for(proc.wait(), 20) == 0, output
        assert "waiting for 1 tool calls in flight" in output
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _call_received(client: Client) -> bool:
    """Whether the runner reports a request on its call endpoint (nats.micro STATS)."""
    msg = await client.request(f"$SRV.STATS.{subjects.TOOLS_SERVICE}", b"", timeout=2)
    stats = orjson.loads(msg.data)
    return any(e["name"] == "call" and e["num_requests"] > 0 for e in stats["endpoints"])


async def _get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = (await reader.read()).decode()
    writer.close()
    head, _, body = data.partition("\r\n\r\n")
    return int(head.split(" ")[1]), body


async def test_oversized_requests_and_arguments_are_refused_with_a_reason(
    nats_url: str, client: Client, slow_tools: str
) -> None:
    async with ToolRunner(settings(nats_url, "bounded", slow_tools)):
        # Arguments over 64 KiB: a tool error the model hears, the tool never runs.
        reply = await call(client, "slow_echo", {"n": 1, "pad": "x" * 100_000})
        assert not reply.ok and "over the 65536-byte limit" in reply.output["error"], reply
        # A request too big to be a tool call at all is refused before parsing.
        huge = b'{"name": "' + b"x" * 200_000 + b'"}'
        msg = await client.request(subjects.TOOLS_CALL, huge, timeout=5)
        assert msg.headers and msg.headers["Nats-Service-Error-Code"] == "413"
        assert "over the" in msg.headers["Nats-Service-Error"]
        assert (await call(client, "slow_echo", {"n": 2})).output == 2


async def test_healthz_is_unhealthy_while_the_runner_drains(nats_url: str, client: Client, slow_tools: str) -> None:
    runner = ToolRunner(settings(nats_url, "draining", slow_tools))
    await runner.__aenter__()
    assert await _get(runner.health.port, "/healthz") == (200, "ok\n")
    in_flight = asyncio.create_task(call(client, "slow_echo", {"n": 3, "delay": 1.5}))
    await poll(lambda: runner.service.in_flight > 0, "the call to reach the runner")
    stopping = asyncio.create_task(runner.__aexit__(None, None, None))
    await poll(lambda: not runner.service.serving, "the runner to stop taking calls")
    status, body = await _get(runner.health.port, "/healthz")
    assert status == 503 and "stopping" in body
    assert (await in_flight).output == 3
    await stopping
