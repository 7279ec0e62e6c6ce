"""Sessions end everywhere, guessing is throttled, tokens are strong, and the app is right behind a
TLS proxy: against the real test NATS and PostgreSQL, with the admin API served by uvicorn where a
stream or a proxy is involved (an in-process transport buffers a whole response)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
import httpx
import pytest
import uvicorn
from aiohttp import web
from dialtone_admin.app import create_app
from dialtone_admin.main import server_config
from dialtone_admin.metrics import REGISTRY
from dialtone_admin.settings import AdminSettings
from dialtone_common import bus
from dialtone_common.embedded import free_port
from dialtone_proto import subjects
from dialtone_proto.frames import Kind, encode_frame
from dialtone_sim.polling import poll
from pydantic import ValidationError

pytestmark = pytest.mark.integration

TOKEN = "test-admin-token-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _settings(database_url: str, nats_url: str, **extra: object) -> AdminSettings:
    return AdminSettings(database_url=database_url, nats_url=nats_url, admin_token=TOKEN, **extra)


@contextlib.asynccontextmanager
async def served(settings: AdminSettings) -> AsyncIterator[str]:
    """The admin API under uvicorn, as ``python -m dialtone_admin`` serves it; yields its URL."""
    settings = settings.model_copy(update={"port": free_port(), "host": "127.0.0.1"})
    config = server_config(settings)
    config.log_level = logging.WARNING
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await poll(lambda: server.started or task.done(), 30, 0.02, "the admin API to start")
        assert not task.done(), task.exception()
        yield f"http://127.0.0.1:{settings.port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


@contextlib.asynccontextmanager
async def in_process(settings: AdminSettings, address: str = "127.0.0.1") -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


async def sign_in(client: httpx.AsyncClient) -> str:
    r = await client.post("/auth/session", json={"token": TOKEN})
    assert r.status_code == 200, r.text
    return r.cookies["dialtone_session"]


def cookie_client(url: str, cookie: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, cookies={"dialtone_session": cookie}, timeout=10)


async def test_sign_out_ends_the_session_on_every_instance_and_after_a_restart(database_url, nats_url) -> None:
    settings = _settings(database_url, nats_url)
    async with in_process(settings) as a, in_process(settings) as b:
        cookie = await sign_in(a)
        b.cookies.set("dialtone_session", cookie)
        # Signed in on A a moment ago: B accepts it at once (it asks the shared register).
        assert (await b.get("/sessions?limit=1")).status_code == 200
        listed = (await b.get("/auth/sessions")).json()["items"]
        mine = [s for s in listed if s["current"]]
        assert len(mine) == 1 and mine[0]["address"] == "127.0.0.1"
        assert cookie.split(".")[2] not in str(listed)  # the list never shows what makes a cookie
        out = await a.post("/auth/logout")
        assert out.status_code == 204
        signed_out = time.monotonic()
        await poll(lambda: _refused(b), 1.0, 0.02, "B to refuse the signed-out cookie")
        print(f"sign-out on A refused on B after {1000 * (time.monotonic() - signed_out):.0f} ms")
    # A restarted instance (a new process reads the register) refuses it too.
    async with in_process(settings) as c:
        c.cookies.set("dialtone_session", cookie)
        assert (await c.get("/sessions?limit=1")).status_code == 401
        assert (await c.get("/calls")).status_code == 303


async def _refused(client: httpx.AsyncClient) -> bool:
    return (await client.get("/sessions?limit=1")).status_code == 401


async def test_an_operator_lists_sign_ins_and_ends_them_all(database_url, nats_url) -> None:
    settings = _settings(database_url, nats_url)
    async with in_process(settings) as a, in_process(settings, "198.51.100.7") as b:
        first, second = await sign_in(a), await sign_in(b)

        async def both_listed() -> bool:  # B's sign-in reaches A's copy of the register by its watch
            items = (await a.get("/auth/sessions", headers=AUTH)).json()["items"]
            return {"127.0.0.1", "198.51.100.7"} <= {s["address"] for s in items}

        await poll(both_listed, 1.0, 0.02, "both sign-ins listed on A")
        # Ending sign-ins needs the token, or a session from this server's page, never another site.
        assert (await a.delete("/auth/sessions", headers={"Origin": "https://evil.example"})).status_code == 401
        assert (await a.delete("/auth/sessions", headers={"Authorization": "Bearer wrong"})).status_code == 401
        one = next(s for s in (await a.get("/auth/sessions")).json()["items"] if s["address"] == "198.51.100.7")
        assert (await a.delete(f"/auth/sessions/{one['id']}")).status_code == 204
        await poll(lambda: _refused(b), 1.0, 0.02, "B's own sign-in to end")
        assert (await a.delete(f"/auth/sessions/{one['id']}")).status_code == 404
        b.cookies.set("dialtone_session", second)
        assert (await b.get("/sessions?limit=1")).status_code == 401
        # Sign everyone out, from B, with the bearer token: A's cookie is refused within a second.
        r = await b.delete("/auth/sessions", headers=AUTH)
        assert r.status_code == 200 and r.json()["revoked"] >= 1
        a.cookies.set("dialtone_session", first)
        await poll(lambda: _refused(a), 1.0, 0.02, "A to refuse after sign-out-all")
        assert (await a.get("/sessions?limit=1", headers=AUTH)).status_code == 200  # the token still works


async def _events_until_closed(response: httpx.Response, counter: list[float]) -> None:
    async for chunk in response.aiter_bytes():
        counter.extend(time.monotonic() for _ in range(chunk.count(b"event: audio")))


async def _talk(nc, call_id: str, stop: asyncio.Event) -> None:
    """Both sides of a call's audio, a frame each every 20 ms, until ``stop``."""
    seq = 0
    while not stop.is_set():
        await nc.publish(subjects.call_in(call_id, "k1"), encode_frame(Kind.AUDIO, seq, seq * 20, b"\xff" * 160))
        await nc.publish(subjects.call_out(call_id, "k1"), encode_frame(Kind.AUDIO, seq, seq * 20, b"\x7f" * 160))
        seq += 1
        await asyncio.sleep(0.02)


async def test_a_busy_listen_in_and_live_view_end_within_a_second_of_sign_out_elsewhere(database_url, nats_url) -> None:
    settings = _settings(database_url, nats_url)
    call_id = "CA" + uuid.uuid4().hex
    nc = await bus.connect(nats_url, "listen-signout-test")
    stop = asyncio.Event()
    async with served(settings) as one, served(settings) as two:
        async with httpx.AsyncClient(base_url=one, timeout=10) as signer:
            cookie = await sign_in(signer)
        talking = asyncio.create_task(_talk(nc, call_id, stop))
        try:
            async with cookie_client(one, cookie) as browser:
                async with (
                    browser.stream("GET", f"/live/{call_id}/listen") as listen,
                    browser.stream("GET", "/live/stream") as live,
                ):
                    assert listen.status_code == 200 and live.status_code == 200
                    heard: list[float] = []
                    reading = asyncio.create_task(_events_until_closed(listen, heard))
                    watching = asyncio.create_task(live.aread())
                    await poll(lambda: len(heard) > 20, 10, 0.02, "audio to flow")
                    # Signed out on the other instance, while frames arrive every 20 ms.
                    async with cookie_client(two, cookie) as other:
                        assert (await other.post("/auth/logout")).status_code == 204
                    signed_out = time.monotonic()
                    await asyncio.wait_for(reading, 5)
                    listen_ended = time.monotonic() - signed_out
                    await asyncio.wait_for(watching, 5)
                    live_ended = time.monotonic() - signed_out
                    after = sum(1 for t in heard if t > signed_out)
                    print(f"listen-in ended {1000 * listen_ended:.0f} ms after sign-out ({after} events after it); "
                          f"live view {1000 * live_ended:.0f} ms")
                    assert listen_ended < 1.0 and live_ended < 1.0
                    assert after < 100  # 1 s of both sides is 100 frames
        finally:
            stop.set()
            await talking
            await nc.drain()


async def test_a_busy_listen_in_ends_when_its_session_expires(database_url, nats_url) -> None:
    settings = _settings(database_url, nats_url, session_ttl_s=3)
    call_id = "CA" + uuid.uuid4().hex
    nc = await bus.connect(nats_url, "listen-expiry-test")
    stop = asyncio.Event()
    async with served(settings) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as signer:
            r = await signer.post("/auth/session", json={"token": TOKEN})
            cookie, expires_at = r.cookies["dialtone_session"], r.json()["expires_at"]
        talking = asyncio.create_task(_talk(nc, call_id, stop))
        try:
            async with cookie_client(url, cookie) as browser, browser.stream("GET", f"/live/{call_id}/listen") as listen:
                heard: list[float] = []
                await asyncio.wait_for(_events_until_closed(listen, heard), 10)
                late = time.time() - expires_at
                print(f"listen-in ended {1000 * late:.0f} ms after its session expired")
                assert heard and late < 1.0
        finally:
            stop.set()
            await talking
            await nc.drain()


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_guessing_is_throttled_per_address_and_the_right_token_works_elsewhere(
    database_url, nats_url, caplog
) -> None:
    settings = _settings(database_url, nats_url)
    caplog.set_level(logging.WARNING, "dialtone_admin.throttle")
    # The counters are the process's: earlier tests in it (a wrong sign-in in test_api.py) counted
    # too, so what this test adds is what is checked.
    failures_before = _sample("dialtone_admin_auth_failures_total", via="sign_in")
    throttled_before = _sample("dialtone_admin_auth_throttled_total", scope="address")
    async with in_process(settings, "203.0.113.5") as guesser, in_process(settings, "198.51.100.1") as operator:
        app = guesser.app  # type: ignore[attr-defined]
        for i in range(10):
            r = await guesser.post("/auth/session", json={"token": f"guess-{i}"})
            assert r.status_code == 401
        refused = await guesser.post("/auth/session", json={"token": "guess-10"})
        assert refused.status_code == 429 and 50 <= int(refused.headers["retry-after"]) <= 60
        # Even the right token is refused from the throttled address, as a bearer too...
        assert (await guesser.post("/auth/session", json={"token": TOKEN})).status_code == 429
        assert (await guesser.get("/sessions", headers=AUTH)).status_code == 429
        # ...and works from another address, on another instance and on this one.
        assert (await operator.get("/sessions?limit=1", headers=AUTH)).status_code == 200
        assert (await sign_in(operator))
        transport = httpx.ASGITransport(app=app, client=("198.51.100.2", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as elsewhere:
            assert (await elsewhere.get("/sessions?limit=1", headers=AUTH)).status_code == 200
        assert "dialtone_admin_auth_failures_total" in (await guesser.get("/metrics")).text
    assert _sample("dialtone_admin_auth_failures_total", via="sign_in") - failures_before == 10
    assert _sample("dialtone_admin_auth_throttled_total", scope="address") - throttled_before == 3
    logged = [r.getMessage() for r in caplog.records]
    assert sum("203.0.113.5" in m for m in logged) == 10
    assert not any("guess-" in m or TOKEN in m for m in logged)  # the token is never logged


async def test_guessing_from_many_addresses_trips_the_global_limit_but_not_clean_addresses(
    database_url, nats_url
) -> None:
    settings = _settings(database_url, nats_url, auth_failures_per_address=100, auth_failures_global=5)
    app = create_app(settings)
    async with app.router.lifespan_context(app):

        def client(address: str) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=app, client=(address, 1))
            return httpx.AsyncClient(transport=transport, base_url="http://admin")

        for n in range(5):
            async with client(f"203.0.113.{n}") as c:
                assert (await c.get("/sessions", headers={"Authorization": "Bearer wrong"})).status_code == 401
        async with client("203.0.113.0") as c:
            r = await c.get("/sessions", headers=AUTH)
            assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
        async with client("192.0.2.44") as clean:  # never failed: never held off
            assert (await clean.get("/sessions?limit=1", headers=AUTH)).status_code == 200


@pytest.mark.unit
@pytest.mark.parametrize(
    ("token", "says"),
    [("change-me-admin-token", "placeholder"), ("short-but-random-Xq9", "fewer than 32"), ("x" * 31, "fewer than 32")],
)
def test_a_weak_admin_token_is_refused_with_how_to_make_one(token: str, says: str) -> None:
    with pytest.raises(ValidationError) as refused:
        AdminSettings(database_url="postgresql://db", admin_token=token)
    assert says in str(refused.value) and "secrets.token_urlsafe(32)" in str(refused.value)
    AdminSettings(database_url="postgresql://db", admin_token="x" * 32)


@pytest.mark.unit
def test_the_service_refuses_to_start_with_a_placeholder_token() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADMIN_", "DATABASE_URL"))}
    env |= {"ADMIN_TOKEN": "change-me-admin-token", "DATABASE_URL": "postgresql://127.0.0.1:1/none"}
    done = subprocess.run(
        [sys.executable, "-m", "dialtone_admin"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert "ADMIN_TOKEN" in done.stderr and "placeholder" in done.stderr and "token_urlsafe" in done.stderr
    assert "Traceback" not in done.stderr


async def test_head_with_a_session_cookie_answers_like_get(database_url, nats_url) -> None:
    async with in_process(_settings(database_url, nats_url)) as client:
        await sign_in(client)
        get, head = await client.get("/sessions?limit=1"), await client.head("/sessions?limit=1")
        assert head.status_code == get.status_code == 200
        assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"]
        assert (await client.head("/calls")).status_code == 200
        assert (await client.head("/sessions/CAnope")).status_code == 404
        client.cookies.clear()
        assert (await client.head("/sessions")).status_code == 401


async def test_a_timezone_postgresql_does_not_know_is_a_422_in_our_words(database_url, nats_url) -> None:
    async with in_process(_settings(database_url, nats_url)) as client:
        for tz in ("posixrules", "localtime", "Factory", "../etc/passwd"):
            r = await client.get(
                "/stats/daily", params={"since": "2025-01-01", "until": "2025-01-08", "tz": tz}, headers=AUTH
            )
            assert r.status_code == 422, (tz, r.text)
            assert "unknown timezone" in r.text and "postgres" not in r.text.lower() and "invalid value" not in r.text


@contextlib.asynccontextmanager
async def tls_proxy(upstream: str) -> AsyncIterator[str]:
    """A proxy as a TLS-terminating ingress is: it forwards every request with ``X-Forwarded-Proto:
    https`` and the client's address in ``X-Forwarded-For``, the Host header kept."""
    session = aiohttp.ClientSession(auto_decompress=False)

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("x-forwarded-for", "x-forwarded-proto")}
        headers |= {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.77"}
        async with session.request(
            request.method, upstream + request.rel_url.path_qs, headers=headers, data=await request.read(),
            allow_redirects=False,
        ) as r:  # fmt: skip
            body = await r.read()
            response = web.Response(status=r.status, body=body)
            for key, value in r.headers.items():
                if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                    response.headers.add(key, value)
            return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        await session.close()


async def test_behind_a_tls_proxy_cookies_are_secure_and_metrics_and_docs_are_not_public(
    database_url, nats_url, caplog
) -> None:
    metrics_port = free_port()
    settings = _settings(database_url, nats_url, forwarded_allow_ips="127.0.0.1", metrics_port=metrics_port)
    caplog.set_level(logging.WARNING, "dialtone_admin.throttle")
    async with served(settings) as admin, tls_proxy(admin) as public:
        host = public.removeprefix("http://")
        async with httpx.AsyncClient(base_url=public, timeout=10) as browser:
            # The browser is on https://<host>: its Origin matches the scheme the proxy vouches for.
            r = await browser.post("/auth/session", json={"token": TOKEN}, headers={"Origin": f"https://{host}"})
            assert r.status_code == 200, r.text
            cookie = r.headers["set-cookie"]
            assert "Secure" in cookie and "HttpOnly" in cookie
            # What the public listener does not serve: metrics, and the API's docs without a session.
            assert (await browser.get("/metrics")).status_code == 404
            browser.cookies.clear()
            assert (await browser.get("/docs")).status_code == 401
            assert (await browser.get("/openapi.json")).status_code == 401
            # A wrong token through the proxy is the client's, not the proxy's: the throttle holds
            # the guesser off and not everyone behind the ingress.
            await browser.get("/sessions", headers={"Authorization": "Bearer wrong"})
        assert any("203.0.113.77" in rec.getMessage() for rec in caplog.records)
        # Forwarded headers from anyone but the trusted proxy are ignored: no https, no Secure.
        async with httpx.AsyncClient(
            base_url=admin, timeout=10, transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        ) as direct:
            origin = "https://" + admin.removeprefix("http://")  # its own host: only the scheme is claimed
            spoofed = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "192.0.2.1", "Origin": origin}
            assert (await direct.post("/auth/session", json={"token": TOKEN}, headers=spoofed)).status_code == 403
        async with httpx.AsyncClient(timeout=10) as scraper:
            scraped = await scraper.get(f"http://127.0.0.1:{metrics_port}/metrics")
            assert scraped.status_code == 200 and "dialtone_admin_auth_failures_total" in scraped.text
