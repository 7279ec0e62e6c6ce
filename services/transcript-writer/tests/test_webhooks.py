"""Webhooks: the writer's outbox and the deliverer against local receivers (aiohttp), whose
signature check is written here from the Standard Webhooks spec, independently of the
``standardwebhooks`` package that signs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiohttp import web
from dialtone_common.session_view import get_session, session_json
from dialtone_common.webhook_config import (
    Endpoint,
    WebhookConfigError,
    agent_endpoints,
    check_secret,
    load_agent_endpoints,
)
from dialtone_proto import CallAnalyzed, CallEnded, CallStarted, TranscriptLine
from dialtone_sim.polling import poll
from dialtone_writer import metrics
from dialtone_writer.settings import WriterSettings
from dialtone_writer.store import write_events
from dialtone_writer.webhooks import Deliverer, Outbox, backoff_s, delivery_id, envelope, retry_after_s

SECRET = "whsec_" + base64.b64encode(b"dialtone-webhook-test-secret-32b").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"another-endpoint-secret-of-32-b!").decode()


# ---- an independent verifier: the spec, by hand -------------------------------------------------
def verify(secret: str, headers: dict[str, str], body: bytes, tolerance_s: int = 300) -> None:
    """Standard Webhooks: HMAC-SHA256 under the base64-decoded secret (after ``whsec_``) of
    ``{webhook-id}.{webhook-timestamp}.{body}``, base64, as ``v1,<sig>`` among the space-separated
    signatures; the timestamp within ``tolerance_s`` of now."""
    msg_id, stamp, signatures = headers["webhook-id"], headers["webhook-timestamp"], headers["webhook-signature"]
    assert abs(time.time() - int(stamp)) <= tolerance_s, "timestamp outside the tolerance"
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()).decode()
    versions = [s.split(",", 1) for s in signatures.split(" ")]
    assert any(v == "v1" and hmac.compare_digest(sig, expected) for v, sig in versions), "no valid v1 signature"


@dataclass
class Hit:
    at: float  # monotonic
    headers: dict[str, str]
    body: bytes

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def json(self) -> dict[str, Any]:
        return orjson.loads(self.body)


@dataclass
class Receiver:
    """A local endpoint: verifies every request, records it, answers with ``answer(n)`` (the nth
    request, from 1): a status, or ``"hang"`` to never answer."""

    secret: str = SECRET
    answer: Callable[[int], int | str] = lambda n: 200
    hits: list[Hit] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None
    _hung: asyncio.Event = field(default_factory=asyncio.Event)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        verify(self.secret, headers, body)
        self.hits.append(Hit(time.monotonic(), headers, body))
        reply = self.answer(len(self.hits))
        if reply == "hang":
            await self._hung.wait()  # released at close
        return web.Response(status=int(reply), text="ok" if reply == 200 else "x" * 500)

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._hung.set()
        assert self._runner is not None
        await self._runner.cleanup()


# ---- unit ---------------------------------------------------------------------------------------
@pytest.mark.unit
def test_the_delivery_id_is_deterministic_per_endpoint_and_event() -> None:
    assert delivery_id("global", "CA1-1") == delivery_id("global", "CA1-1")
    assert delivery_id("global", "CA1-1") != delivery_id("support/crm", "CA1-1") != delivery_id("global", "CA1-2")
    assert delivery_id("global", "CA1-1").startswith("msg_")


@pytest.mark.unit
def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    rng = random.Random(7)
    delays = [backoff_s(attempt, 5.0, 3600.0, rng) for attempt in range(1, 14)]
    for attempt, delay in enumerate(delays, 1):
        ceiling = min(3600.0, 5.0 * 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert delays[:10] == sorted(delays[:10])  # 50-100 % of a doubling: never shorter than the one before
    assert sum(delays) < 6 * 3600  # 14 attempts within 6 h; the default 24 h holds some 40


@pytest.mark.unit
def test_retry_after_in_seconds_or_as_a_date() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_after_s("7", now) == 7.0
    assert retry_after_s("Thu, 01 Jan 2026 00:00:30 GMT", now) == 30.0
    assert retry_after_s("soon", now) is None and retry_after_s(None, now) is None


@pytest.mark.unit
def test_the_package_signature_verifies_with_the_hand_written_check() -> None:
    from standardwebhooks.webhooks import Webhook

    now = datetime.now(UTC)
    body = envelope("call.ended", now, {"call_sid": "CA1"})
    headers = {"webhook-id": "msg_x", "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": Webhook(SECRET).sign("msg_x", now, body)}
    verify(SECRET, headers, body)
    with pytest.raises(AssertionError):
        verify(OTHER_SECRET, headers, body)


@pytest.mark.unit
def test_agent_webhooks_name_their_secret_in_the_environment(tmp_path) -> None:
    raw = [{"url": "https://crm.example.com/h", "secret_env": "CRM_SECRET", "events": ["call.ended"], "name": "crm"}]
    (ep,) = agent_endpoints("support", raw, {"CRM_SECRET": SECRET})
    assert (ep.name, ep.agent, ep.events, ep.secret) == ("support/crm", "support", frozenset({"call.ended"}), SECRET)
    assert ep.wants("call.ended", "support") and not ep.wants("call.ended", "billing")
    assert not ep.wants("call.started", "support")
    with pytest.raises(WebhookConfigError, match="CRM_SECRET is not set"):
        agent_endpoints("support", raw, {})
    with pytest.raises(WebhookConfigError, match="no secret in agent.toml"):
        agent_endpoints("support", [{"url": "https://x.example/h", "secret": SECRET}], None)
    with pytest.raises(WebhookConfigError, match="unknown events"):
        agent_endpoints("support", [{**raw[0], "events": ["call.exploded"]}], None)
    with pytest.raises(WebhookConfigError, match="whsec_"):
        check_secret("whsec_not base64!", "WEBHOOK_SECRET")
    (tmp_path / "support").mkdir()
    (tmp_path / "support" / "agent.toml").write_text(
        '[[webhooks]]\nurl = "https://crm.example.com/h"\nsecret_env = "CRM_SECRET"\n'
    )
    (ep,) = load_agent_endpoints(tmp_path, {"CRM_SECRET": SECRET})
    assert ep.name == "support/1" and ep.events == frozenset({"call.started", "call.ended", "call.analyzed"})


@pytest.mark.unit
def test_settings_want_a_secret_with_the_url(monkeypatch) -> None:
    base = {"database_url": "postgresql://x/y"}
    with pytest.raises(ValueError, match="WEBHOOK_URL needs WEBHOOK_SECRET"):
        WriterSettings(**base, webhook_url="https://crm.example.com/h")
    settings = WriterSettings(**base, webhook_url="https://crm.example.com/h", webhook_secret=SECRET,
                              webhook_events="call.ended", agents_dir="/nonexistent")
    (ep,) = settings.webhook_endpoints({})
    assert (ep.name, ep.url, ep.events, ep.agent) == ("global", "https://crm.example.com/h", frozenset({"call.ended"}), None)


# ---- integration: PostgreSQL, the outbox and the deliverer -------------------------------------
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


def call_events(call_id: str, agent: str = "support") -> list:
    return [
        CallStarted(id=f"{call_id}-1", call_id=call_id, at=T0, agent=agent, from_number="+15550001",
                    to_number="+15005550006"),
        TranscriptLine(id=f"{call_id}-2", call_id=call_id, at=T0 + timedelta(seconds=1), item_id="i1", seq=0,
                       role="caller", text="Hello there", agent=agent),
        CallEnded(id=f"{call_id}-3", call_id=call_id, at=T0 + timedelta(seconds=9), reason="caller_hangup"),
    ]


def uniq(name: str) -> str:
    """An endpoint name of this test only: a deliverer sends every pending delivery of its endpoint."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def new_call() -> str:
    return "CA" + uuid.uuid4().hex


async def deliveries(pool, call_id: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT d.*, (SELECT json_agg(a ORDER BY a.n) FROM webhook_attempts a WHERE a.delivery_id = d.id) AS tries"
        " FROM webhook_deliveries d WHERE call_sid = $1 ORDER BY seq", call_id)
    return [dict(r) for r in rows]


def fast(pool, endpoints: list[Endpoint], **kw: Any) -> Deliverer:
    settings: dict[str, Any] = {"retry_for_s": 60.0, "timeout_s": 2.0, "backoff_s": 0.2, "backoff_max_s": 5.0,
                                "poll_s": 0.05, "gauge_every_s": 0.2} | kw
    return Deliverer(pool, endpoints, **settings)


class Running:
    def __init__(self, deliverer: Deliverer) -> None:
        self.deliverer, self.stop = deliverer, asyncio.Event()
        self.task = asyncio.create_task(deliverer.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 10)


@pytest.fixture
async def run_deliverer(pool):
    running: list[Running] = []

    def start(endpoints: list[Endpoint], **kw: Any) -> Running:
        r = Running(fast(pool, endpoints, **kw))
        running.append(r)
        return r

    yield start
    for r in running:
        if not r.task.done():
            await r.close()



@pytest.mark.integration
async def test_outbox_enqueues_once_per_event_and_endpoint_in_the_writers_transaction(pool) -> None:
    call = new_call()
    endpoints = [Endpoint(uniq("global"), "http://127.0.0.1:9/h", SECRET),
                 Endpoint(uniq("support/crm"), "http://127.0.0.1:9/c", OTHER_SECRET, frozenset({"call.ended"}), "support"),
                 Endpoint(uniq("billing/crm"), "http://127.0.0.1:9/b", OTHER_SECRET, agent="billing")]
    outbox = Outbox(endpoints, ended_delay_s=0)
    async with pool.acquire() as conn:
        result = await write_events(conn, call_events(call), outbox)
        again = await write_events(conn, call_events(call), outbox)  # a redelivery adds nothing
    assert (result.webhooks, again.webhooks) == (3, 0)
    rows = await deliveries(pool, call)
    names = [e.name for e in endpoints]
    assert [(r["endpoint"], r["event_type"]) for r in rows] == [
        (names[0], "call.started"), (names[0], "call.ended"), (names[1], "call.ended")]
    assert rows[0]["id"] == delivery_id(names[0], f"{call}-1") and {r["status"] for r in rows} == {"pending"}


@pytest.mark.integration
async def test_500_three_times_then_200_is_one_delivery_of_four_attempts_with_growing_gaps(pool, run_deliverer) -> None:
    call = new_call()
    async with Receiver(answer=lambda n: 500 if n <= 3 else 200) as receiver:
        endpoint = Endpoint(uniq("global"), receiver.url, SECRET, frozenset({"call.ended"}))
        async with pool.acquire() as conn:
            await write_events(conn, call_events(call), Outbox([endpoint]))
        before = metrics.REGISTRY.get_sample_value("dialtone_writer_webhook_failures_total", {"reason": "http_5xx"})
        run_deliverer([endpoint], backoff_s=0.3, jitter=0.2)

        async def delivered():
            rows = await deliveries(pool, call)
            return rows if rows and rows[0]["status"] == "delivered" else None

        (row,) = await poll(delivered, timeout=30, what="the delivery to succeed")
    assert len(receiver.hits) == 4 and {h.id for h in receiver.hits} == {row["id"]}  # nothing lost or doubled
    assert len({h.body for h in receiver.hits}) == 1  # every retry the same bytes
    gaps = [b.at - a.at for a, b in zip(receiver.hits, receiver.hits[1:], strict=False)]
    # Each gap is 80-100 % of 0.3 s doubled per attempt (0.24-0.3, 0.48-0.6, 0.96-1.2 s), plus the
    # poll's and the request's time (a few tens of ms).
    assert [g >= floor for g, floor in zip(gaps, (0.24, 0.48, 0.96), strict=True)] == [True] * 3, gaps
    assert gaps[0] < gaps[1] < gaps[2] < 3, gaps
    print("attempt gaps (s):", [round(g, 3) for g in gaps])
    assert [t["status_code"] for t in row["tries"]] == [500, 500, 500, 200]
    assert row["tries"][0]["response"] == "x" * 200 and row["tries"][3]["response"] == "ok"
    assert row["attempts"] == 4 and row["last_status"] == 200
    after = metrics.REGISTRY.get_sample_value("dialtone_writer_webhook_failures_total", {"reason": "http_5xx"})
    assert after - before == 3
    body = receiver.hits[-1].json
    assert body["type"] == "call.ended" and body["timestamp"] == (T0 + timedelta(seconds=9)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # the hang-up's time
    async with pool.acquire() as conn:
        assert body["data"] == session_json(await get_session(conn, call))
    assert body["data"]["transcript"][0]["text"] == "Hello there" and body["data"]["ended_at"] is not None


@pytest.mark.integration
async def test_order_per_call_started_before_ended(pool, run_deliverer) -> None:
    calls = [new_call() for _ in range(3)]
    async with Receiver(answer=lambda n: 503 if n == 1 else 200) as receiver:  # the first try fails
        endpoint = Endpoint(uniq("global"), receiver.url, SECRET)
        async with pool.acquire() as conn:
            for call in calls:
                await write_events(conn, call_events(call), Outbox([endpoint]))
        run_deliverer([endpoint], backoff_s=0.2)
        await poll(lambda: len({h.id for h in receiver.hits}) == 6, timeout=20, what="six deliveries")
    for call in calls:
        types = [h.json["type"] for h in receiver.hits if h.json["data"]["call_sid"] == call and h.json]
        order = list(dict.fromkeys(types))
        assert order == ["call.started", "call.ended"], (call, types)


@pytest.mark.integration
async def test_a_hanging_endpoint_does_not_delay_another(pool, run_deliverer) -> None:
    call = new_call()
    async with Receiver(answer=lambda n: "hang") as slow, Receiver(secret=OTHER_SECRET) as quick:
        endpoints = [Endpoint(uniq("slow"), slow.url, SECRET), Endpoint(uniq("quick"), quick.url, OTHER_SECRET)]
        async with pool.acquire() as conn:
            await write_events(conn, call_events(call), Outbox(endpoints))
        started = time.monotonic()
        run_deliverer(endpoints, timeout_s=30.0)
        await poll(lambda: len(quick.hits) == 2, timeout=10, interval=0.02, what="the quick endpoint's two")
        took = time.monotonic() - started
        assert len(slow.hits) == 1  # the slow one is still on its first request
    print(f"quick endpoint's two deliveries while the other hangs: {took:.3f} s")
    assert took < 2.0


@pytest.mark.integration
async def test_a_deliverer_killed_mid_delivery_delivers_on_restart_with_the_same_id(pool, run_deliverer) -> None:
    call = new_call()
    async with Receiver(answer=lambda n: "hang" if n == 1 else 200) as receiver:
        endpoint = Endpoint(uniq("global"), receiver.url, SECRET, frozenset({"call.started"}))
        async with pool.acquire() as conn:
            await write_events(conn, call_events(call), Outbox([endpoint]))
        first = run_deliverer([endpoint], timeout_s=1.0)
        await poll(lambda: len(receiver.hits) == 1, timeout=10, interval=0.02, what="the first request")
        first.task.cancel()  # killed: no outcome written, its lease left behind
        await asyncio.gather(first.task, return_exceptions=True)
        (row,) = await deliveries(pool, call)
        assert row["status"] == "pending" and row["tries"][0]["error"].startswith("no outcome recorded")
        run_deliverer([endpoint], timeout_s=1.0)  # the restart: it waits out the lease (1 + 5 s)

        async def delivered():
            rows = await deliveries(pool, call)
            return rows[0] if rows[0]["status"] == "delivered" else None

        row = await poll(delivered, timeout=20, what="the delivery after the restart")
    assert [h.id for h in receiver.hits] == [row["id"], row["id"]]
    assert receiver.hits[0].body == receiver.hits[1].body
    assert [t["status_code"] for t in row["tries"]] == [None, 200]


@pytest.mark.integration
async def test_4xx_is_dead_at_once_and_a_retry_window_that_runs_out_is_dead(pool, run_deliverer) -> None:
    gone, late = new_call(), new_call()
    async with Receiver(answer=lambda n: 410) as refusing, Receiver(answer=lambda n: 500) as failing:
        a = Endpoint(uniq("refusing"), refusing.url, SECRET, frozenset({"call.started"}))
        b = Endpoint(uniq("failing"), failing.url, SECRET, frozenset({"call.started"}))
        async with pool.acquire() as conn:
            await write_events(conn, call_events(gone), Outbox([a]))
            await write_events(conn, call_events(late), Outbox([b]))
        run_deliverer([a, b], retry_for_s=1.0, backoff_s=0.2)

        async def dead(call):
            rows = await deliveries(pool, call)
            return rows[0] if rows[0]["status"] == "dead" else None

        refused = await poll(lambda: dead(gone), timeout=10, what="the refused delivery to be dead")
        ran_out = await poll(lambda: dead(late), timeout=15, what="the failing delivery to be dead")
    assert refused["attempts"] == 1 and refused["last_status"] == 410
    assert ran_out["attempts"] >= 2 and ran_out["last_status"] == 500


@pytest.mark.integration
async def test_429_waits_for_retry_after(pool, run_deliverer) -> None:
    call = new_call()

    class Limited(Receiver):
        async def _handle(self, request: web.Request) -> web.Response:
            body = await request.read()
            self.hits.append(Hit(time.monotonic(), {k.lower(): v for k, v in request.headers.items()}, body))
            if len(self.hits) == 1:
                return web.Response(status=429, headers={"Retry-After": "1"})
            return web.Response(status=204)

    async with Limited() as receiver:
        endpoint = Endpoint(uniq("global"), receiver.url, SECRET, frozenset({"call.started"}))
        async with pool.acquire() as conn:
            await write_events(conn, call_events(call), Outbox([endpoint]))
        run_deliverer([endpoint], backoff_s=0.05)
        await poll(lambda: len(receiver.hits) == 2, timeout=10, what="the retry")
    assert receiver.hits[1].at - receiver.hits[0].at >= 0.95


@pytest.mark.integration
async def test_call_analyzed_is_stored_and_delivered_with_the_analysis(pool, run_deliverer) -> None:
    call = new_call()
    async with Receiver() as receiver:
        endpoint = Endpoint(uniq("global"), receiver.url, SECRET, frozenset({"call.analyzed"}))
        analyzed = CallAnalyzed(id=f"{call}-analysis", call_id=call, at=T0 + timedelta(seconds=20),
                                analysis={"summary": "Said hello.", "score": 5})
        async with pool.acquire() as conn:
            await write_events(conn, [*call_events(call), analyzed], Outbox([endpoint]))
        run_deliverer([endpoint])
        await poll(lambda: receiver.hits, timeout=10, what="the call.analyzed webhook")
    body = receiver.hits[0].json
    assert body["type"] == "call.analyzed" and body["data"]["analysis"] == {"summary": "Said hello.", "score": 5}


@pytest.mark.integration
async def test_two_writers_deliverers_send_each_delivery_once(pool, run_deliverer) -> None:
    calls = [new_call() for _ in range(8)]
    async with Receiver() as receiver:
        endpoint = Endpoint(uniq("global"), receiver.url, SECRET)
        async with pool.acquire() as conn:
            for call in calls:
                await write_events(conn, call_events(call), Outbox([endpoint]))
        run_deliverer([endpoint], concurrency=3)
        run_deliverer([endpoint], concurrency=3)  # another writer instance

        async def all_delivered() -> bool:
            rows = [r for call in calls for r in await deliveries(pool, call)]
            return len(rows) == 16 and all(r["status"] == "delivered" for r in rows)

        await poll(all_delivered, timeout=20, what="sixteen deliveries delivered")
    ids = [h.id for h in receiver.hits]
    assert len(ids) == len(set(ids)) == 16  # every delivery once, none twice
    for call in calls:
        assert [h.json["type"] for h in receiver.hits if h.json["data"]["call_sid"] == call] == [
            "call.started", "call.ended"]
