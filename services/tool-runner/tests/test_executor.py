"""Executing tool calls: validation, injection, timeouts and errors become answers for the model."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from dialtone_proto import ToolAction, ToolCallRequest
from dialtone_tools import Registry, ToolContext, ToolError, metrics, tool
from dialtone_tools.executor import Executor
from pydantic import BaseModel

pytestmark = pytest.mark.unit

release_hung = threading.Event()
gates: dict[str, asyncio.Event] = {}  # made inside each test's event loop


class Item(BaseModel):
    sku: str
    qty: int = 1


@tool
def add(a: int, b: int = 1) -> int:
    """Add two numbers."""
    return a + b


@tool
async def basket(ctx: ToolContext, items: list[Item]) -> dict[str, Any]:
    """Count items (nested models arrive as model instances)."""
    assert all(isinstance(i, Item) for i in items)
    return {"call": ctx.call_id, "from": ctx.from_number, "vars": ctx.variables,
            "total": sum(i.qty for i in items)}


@tool(parameters={"type": "object", "properties": {"code": {"type": "string", "pattern": "^[0-9]{4}$"}},
                  "required": ["code"], "additionalProperties": False})
def check_code(code: str) -> bool:
    return code == "1234"


@tool(timeout_s=0.2)
async def slow_async() -> str:
    await asyncio.sleep(30)
    return "late"


@tool(timeout_s=0.2)
def hung_sync() -> str:
    release_hung.wait(30)  # a sync tool nobody can interrupt
    return "late"


@tool
async def gated() -> str:
    await gates["gated"].wait()
    return "through"


@tool
def explode() -> None:
    raise KeyError("boom")


@tool
async def refuse() -> None:
    raise ToolError("no such order")


@tool
def unserializable() -> object:
    return object()


@tool
async def timeout_inside() -> None:
    raise TimeoutError("upstream CRM timed out")


@tool
async def outcome_then_fail(ctx: ToolContext) -> None:
    ctx.end_call("done")
    raise RuntimeError("half-way")


@tool
async def needs_db(ctx: ToolContext) -> int:
    return await ctx.db.fetchval("SELECT 1")


@pytest.fixture
def executor() -> Iterator[Executor]:
    registry = Registry()
    for fn in (add, basket, check_code, slow_async, hung_sync, explode, refuse, unserializable,
               timeout_inside, outcome_then_fail, needs_db, gated):
        registry.add(fn)
    release_hung.clear()
    ex = Executor(registry, default_timeout_s=5, max_concurrency=8, runner_id="r1", sync_threads=2)
    yield ex
    release_hung.set()
    ex.close()


def request(name: str, arguments: Any = None, **extra: Any) -> ToolCallRequest:
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
    return ToolCallRequest(call_id="CA123", tool_call_id="tc1", name=name, arguments=raw, agent="default",
                           **extra)


async def test_sync_tool_runs_in_a_thread_with_defaults(executor: Executor) -> None:
    reply = await executor.execute(request("add", {"a": 2}))
    assert reply.ok and reply.output == 3 and reply.error is None
    assert reply.runner_id == "r1" and reply.duration_ms > 0


async def test_async_tool_with_context_and_nested_models(executor: Executor) -> None:
    reply = await executor.execute(request(
        "basket", {"items": [{"sku": "a"}, {"sku": "b", "qty": 3}]},
        from_number="+15005550001", variables={"tier": "gold"},
    ))
    assert reply.ok, reply
    assert reply.output == {"call": "CA123", "from": "+15005550001", "vars": {"tier": "gold"}, "total": 4}


@pytest.mark.parametrize(
    ("name", "arguments", "fragment"),
    [
        ("add", "{not json", "invalid arguments: not JSON"),
        ("add", "[1, 2]", "expected a JSON object"),
        ("add", {"b": 2}, "invalid arguments: a: Field required"),
        ("add", {"a": "seven"}, "invalid arguments: a: "),
        ("add", {"a": 1, "c": 2}, "invalid arguments: c: Extra inputs are not permitted"),
        ("basket", {"items": [{"qty": 2}]}, "invalid arguments: items.0.sku: Field required"),
        ("check_code", {"code": "12"}, "invalid arguments: code: '12' does not match"),
        ("check_code", {}, "invalid arguments: 'code' is a required property"),
    ],
)
async def test_bad_arguments_are_an_answer_naming_the_field(
    executor: Executor, name: str, arguments: Any, fragment: str
) -> None:
    reply = await executor.execute(request(name, arguments))
    assert not reply.ok
    assert fragment in reply.output["error"] and reply.error == reply.output["error"]


async def test_explicit_schema_tool_valid_call(executor: Executor) -> None:
    reply = await executor.execute(request("check_code", {"code": "1234"}))
    assert reply.ok and reply.output is True


async def test_unknown_tool(executor: Executor) -> None:
    reply = await executor.execute(request("nope"))
    assert not reply.ok and reply.output == {"error": "unknown tool nope"}


async def test_async_timeout(executor: Executor) -> None:
    reply = await executor.execute(request("slow_async"))
    assert reply.output == {"error": "tool slow_async timed out after 0.2s"}
    assert reply.duration_ms < 2000


async def test_hung_sync_tools_time_out_and_do_not_block_the_loop(executor: Executor) -> None:
    # More hung calls than threads: each still answers in time, and other tools keep working.
    replies = await asyncio.gather(*(executor.execute(request("hung_sync")) for _ in range(3)),
                                   executor.execute(request("basket", {"items": []})))
    assert [r.output for r in replies[:3]] == [{"error": "tool hung_sync timed out after 0.2s"}] * 3
    assert replies[3].ok


async def test_exceptions_become_errors(executor: Executor, caplog: pytest.LogCaptureFixture) -> None:
    reply = await executor.execute(request("explode"))
    assert reply.output == {"error": "KeyError: 'boom'"}
    assert any(r.exc_info and getattr(r, "ctx", {}).get("call_id") == "CA123" for r in caplog.records)

    assert (await executor.execute(request("refuse"))).output == {"error": "no such order"}
    assert (await executor.execute(request("timeout_inside"))).output == {
        "error": "TimeoutError: upstream CRM timed out"
    }


async def test_result_must_be_json_serializable(executor: Executor) -> None:
    reply = await executor.execute(request("unserializable"))
    assert not reply.ok and "not JSON-serializable" in reply.output["error"]


async def test_builtins_return_actions(executor: Executor) -> None:
    cases = {
        "set_outcome": ({"outcome": "booked", "detail": "Tue 3pm"},
                        ToolAction(action="set_outcome", value="booked", detail="Tue 3pm"),
                        {"ok": True, "outcome": "booked"}),
        "end_call": ({"reason": "caller_done"}, ToolAction(action="end_call", detail="caller_done"),
                     {"ok": True, "action": "end_call"}),
        "transfer_call": ({}, ToolAction(action="transfer_call"), {"ok": True, "action": "transfer_call"}),
        "handoff": ({"agent": "billing"}, ToolAction(action="handoff", value="billing"),
                    {"ok": True, "action": "handoff", "agent": "billing"}),
    }
    for name, (arguments, action, output) in cases.items():
        reply = await executor.execute(request(name, arguments))
        assert reply.ok and reply.actions == [action] and reply.output == output, name


async def test_failed_tool_actions_are_dropped(executor: Executor) -> None:
    reply = await executor.execute(request("outcome_then_fail"))
    assert not reply.ok and reply.actions == []


async def test_db_without_database_url_is_a_tool_error(executor: Executor) -> None:
    reply = await executor.execute(request("needs_db"))
    assert reply.output == {"error": "no database is configured for this tool runner (set DATABASE_URL)"}


async def test_concurrency_limit(executor: Executor) -> None:
    limited = Executor(executor.registry, max_concurrency=1, default_timeout_s=5)
    try:
        # Two 0.2 s timeouts in a row, not side by side: the second waits for the slot.
        replies = await asyncio.gather(*(limited.execute(request("slow_async")) for _ in range(2)))
        assert sorted(r.duration_ms for r in replies)[1] >= 390
    finally:
        limited.close()


async def test_queue_depth_and_in_flight_are_gauged_apart(executor: Executor) -> None:
    """With one slot and three calls: one runs, two wait; the gauges say so, then go back."""
    def sampled() -> tuple[float, float]:
        get = metrics.REGISTRY.get_sample_value
        return get("dialtone_tool_calls_queued") or 0.0, get("dialtone_tool_calls_in_flight") or 0.0

    def gauges() -> tuple[float, float]:
        now = sampled()
        return now[0] - before[0], now[1] - before[1]

    limited = Executor(executor.registry, max_concurrency=1, default_timeout_s=5)
    before = sampled()
    gate = gates["gated"] = asyncio.Event()
    try:
        calls = [asyncio.create_task(limited.execute(request("gated"))) for _ in range(3)]
        async with asyncio.timeout(5):
            while gauges() != (2, 1):  # noqa: ASYNC110 - polled with a deadline: gauges signal nothing
                await asyncio.sleep(0.01)
        gate.set()
        replies = await asyncio.gather(*calls)
        assert [r.output for r in replies] == ["through"] * 3
        assert gauges() == (0, 0)
    finally:
        gate.set()
        limited.close()


async def test_arguments_over_64_kib_are_refused_unparsed(executor: Executor) -> None:
    limit = 64 * 1024
    padded = '{"a": 2' + " " * (limit - len('{"a": 2}')) + "}"  # valid JSON of exactly the limit
    assert (await executor.execute(request("add", padded))).output == 3
    reply = await executor.execute(request("add", padded[:-1] + " }"))
    assert not reply.ok
    assert reply.output == {"error": f"invalid arguments: {limit + 1} bytes, over the {limit}-byte limit"}


async def test_a_test_calls_mock_answers_instead_of_the_tool_after_validating_arguments(executor: Executor) -> None:
    mocks = json.dumps({"add": {"result": {"sum": 99}}, "explode": {"error": "CRM down"}})
    test_call = {"dialtone_eval": "run-1", "dialtone_mocks": mocks}
    reply = await executor.execute(request("add", {"a": 2}, variables=test_call))
    assert reply.ok and reply.output == {"sum": 99}  # not 3: the tool did not run
    reply = await executor.execute(request("explode", {}, variables=test_call))
    assert not reply.ok and reply.output == {"error": "CRM down"}  # not the tool's own exception
    reply = await executor.execute(request("add", {"a": "two"}, variables=test_call))
    assert not reply.ok and "a" in (reply.error or "")  # arguments are still checked first
    # Not a test call: the mocks are ignored and the tool runs for real.
    reply = await executor.execute(request("add", {"a": 2}, variables={"dialtone_mocks": mocks}))
    assert reply.ok and reply.output == 3
    # A test call whose mocks cannot be read fails the tool call visibly.
    reply = await executor.execute(request("add", {"a": 2}, variables={"dialtone_eval": "r", "dialtone_mocks": "{"}))
    assert not reply.ok and "not JSON" in (reply.error or "")
