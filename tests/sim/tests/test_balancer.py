"""The test load balancer in front of two tiny HTTP servers: round-robin over the healthy ones,
health checks that take a backend out and put it back, WebSockets piped through, and nothing
served while no backend is healthy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from dialtone_sim.balancer import Backend, Balancer
from dialtone_sim.polling import poll

pytestmark = pytest.mark.unit


class TinyServer:
    """An HTTP server that says its name on ``/``, echoes on the WebSocket ``/ws`` and answers
    ``/healthz`` with ``health`` (200 or 503)."""

    def __init__(self, name: str) -> None:
        self.name, self.health = name, 200
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, port: int = 0) -> TinyServer:
        app = web.Application()
        app.router.add_get("/", self._name)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/ws", self._ws)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @property
    def backend(self) -> Backend:
        return Backend("127.0.0.1", self.port, f"http://127.0.0.1:{self.port}/healthz")

    async def _name(self, _: web.Request) -> web.Response:
        return web.Response(text=self.name)

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(status=self.health, text="ok" if self.health == 200 else "not ready")

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(f"{self.name}:{msg.data}")
        return ws


@pytest.fixture
async def servers() -> AsyncIterator[tuple[TinyServer, TinyServer]]:
    a, b = await TinyServer("a").start(), await TinyServer("b").start()
    yield a, b
    await a.stop()
    await b.stop()


async def fetch(url: str) -> str:
    """One GET on a fresh TCP connection (so that each request is a new balancing decision)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
            return await r.text()


async def test_new_connections_go_round_robin_to_healthy_backends(servers):
    a, b = servers
    async with Balancer([a.backend, b.backend]) as lb:
        assert lb.url == f"http://127.0.0.1:{lb.port}" and lb.port > 0
        await lb.wait_healthy()
        names = [await fetch(lb.url + "/") for _ in range(10)]
        assert sorted(set(names)) == ["a", "b"]
        assert all(x != y for x, y in zip(names, names[1:], strict=False)), names  # strictly alternating
        assert lb.connections[a.backend.address] == 5 and lb.connections[b.backend.address] == 5


async def test_an_unhealthy_backend_gets_no_new_connection_until_it_is_healthy_again(servers):
    a, b = servers
    async with Balancer([a.backend, b.backend]) as lb:
        await lb.wait_healthy()
        b.health = 503
        await poll(lambda: lb.healthy == [a.backend], 5, what="b to be taken out")
        before = lb.connections[b.backend.address]
        assert {await fetch(lb.url + "/") for _ in range(6)} == {"a"}
        assert lb.connections[b.backend.address] == before
        b.health = 200
        await lb.wait_healthy(2, timeout=5)
        assert {await fetch(lb.url + "/") for _ in range(4)} == {"a", "b"}


async def test_an_open_websocket_is_piped_on_after_its_backend_turns_unhealthy(servers):
    a, b = servers
    async with Balancer([a.backend, b.backend]) as lb:
        await lb.wait_healthy()
        async with aiohttp.ClientSession() as http, http.ws_connect(lb.url + "/ws") as ws:
            await ws.send_str("hello")
            owner_name, _, text = (await ws.receive_str()).partition(":")
            assert text == "hello"
            owner, other = (a, b) if owner_name == "a" else (b, a)
            assert lb.active[owner.backend.address] == 1
            owner.health = 503  # draining: no new connections, the open one goes on
            await poll(lambda: lb.healthy == [other.backend], 5, what="the owner to be taken out")
            assert await fetch(lb.url + "/") == other.name
            payload = "x" * 200_000  # larger than one read: streamed through in pieces
            await ws.send_str(payload)
            assert await ws.receive_str() == f"{owner.name}:{payload}"
        await poll(lambda: lb.active[owner.backend.address] == 0, 5, what="the piped connection to close")


async def test_with_no_healthy_backend_a_connection_is_closed_at_once(servers):
    a, b = servers
    a.health = b.health = 503
    async with Balancer([a.backend, b.backend]) as lb:
        await asyncio.sleep(3 * lb.interval)  # several checks, all failed
        assert lb.healthy == []
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:  # closed, nothing answered (reset if the close found the request unread)
            assert await asyncio.wait_for(reader.read(), 2) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - started < 1
        writer.close()
        assert lb.refused == 1
        assert sum(lb.connections.values()) == 0


async def test_backends_are_set_added_and_removed_while_running(servers):
    a, b = servers
    async with Balancer() as lb:
        assert lb.backends == []
        lb.set_backends([a.backend])
        await lb.wait_healthy()
        assert await fetch(lb.url + "/") == "a"
        lb.add(b.backend)
        await lb.wait_healthy(2, timeout=5)
        assert {await fetch(lb.url + "/") for _ in range(4)} == {"a", "b"}
        lb.remove(a.backend.address)
        assert lb.backends == [b.backend]
        assert {await fetch(lb.url + "/") for _ in range(4)} == {"b"}


async def test_a_backend_that_stopped_listening_is_skipped_before_its_check_notices(servers):
    a, b = servers
    async with Balancer([a.backend, b.backend], interval=60) as lb:  # one check each, at start
        await lb.wait_healthy()
        await a.stop()
        assert {await fetch(lb.url + "/") for _ in range(4)} == {"b"}
        assert lb.connect_failures == 1  # tried once, then out until a check passes
        assert lb.healthy == [b.backend]


async def test_least_connections_sends_a_new_connection_to_the_backend_with_fewest_open(servers):
    a, b = servers
    async with Balancer([a.backend, b.backend], policy="least_connections") as lb:
        await lb.wait_healthy()
        async with aiohttp.ClientSession() as http, http.ws_connect(lb.url + "/ws") as ws:
            await ws.send_str("hi")
            owner = (await ws.receive_str()).partition(":")[0]
            other = "b" if owner == "a" else "a"
            owner_backend = a.backend if owner == "a" else b.backend
            # Every short request (closed before the next) goes to the backend without the socket.
            for _ in range(4):
                assert await fetch(lb.url + "/") == other
                await poll(lambda: lb.active[owner_backend.address] == 1 and sum(lb.active.values()) == 1, 5,
                           interval=0.01, what="the short request's connection to close")
        await poll(lambda: sum(lb.active.values()) == 0, 5, what="the socket to close")
        assert {await fetch(lb.url + "/") for _ in range(4)} == {"a", "b"}  # equals: round-robin
    with pytest.raises(ValueError):
        Balancer(policy="random")  # type: ignore[arg-type]
