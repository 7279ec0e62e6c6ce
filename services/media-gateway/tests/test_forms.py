"""Webhook bodies are bounded before anything parses them (``forms.read_form``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from dialtone_gateway.forms import BodyRejected, read_form
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

pytestmark = [pytest.mark.unit, pytest.mark.asyncio]

LIMIT = 4096


async def endpoint(request: Request) -> JSONResponse | PlainTextResponse:
    try:
        return JSONResponse(await read_form(request, LIMIT, 1.0))
    except BodyRejected as exc:
        return PlainTextResponse(exc.reason, status_code=exc.status)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = Starlette(routes=[Route("/hook", endpoint, methods=["POST"])])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        yield http


FORM_TYPE = {"Content-Type": "application/x-www-form-urlencoded"}


async def test_a_twilio_form_is_read(client: httpx.AsyncClient) -> None:
    r = await client.post("/hook", data={"CallSid": "CA1", "From": "+1 555", "Empty": ""})
    assert r.status_code == 200 and r.json() == {"CallSid": "CA1", "From": "+1 555", "Empty": ""}


@pytest.mark.parametrize(
    ("content", "headers", "status", "reason"),
    [
        pytest.param(b"a=" + b"x" * LIMIT, FORM_TYPE, 413, "too_large", id="declared-too-large"),
        pytest.param(b'{"CallSid": "CA1"}', {"Content-Type": "application/json"}, 415, "content_type", id="json"),
        pytest.param(b"CallSid=CA1", {}, 415, "content_type", id="no-content-type"),
        pytest.param("&".join(f"f{i}=1" for i in range(250)).encode(), FORM_TYPE, 400, "bad_form", id="many-fields"),
        pytest.param(b"a=%ff%fe", FORM_TYPE, 400, "bad_form", id="not-utf8"),
        pytest.param(b"a=%00", FORM_TYPE, 400, "bad_form", id="nul"),
    ],
)
async def test_bodies_a_webhook_never_has_are_refused(client: httpx.AsyncClient, content: bytes,
                                                      headers: dict[str, str], status: int, reason: str) -> None:  # fmt: skip
    r = await client.post("/hook", content=content, headers=headers)
    assert (r.status_code, r.text) == (status, reason)


async def test_an_undeclared_body_is_cut_off_past_the_limit(client: httpx.AsyncClient) -> None:
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(1000):
            sent += 512
            yield b"x" * 512

    r = await client.post("/hook", content=body(), headers=FORM_TYPE)
    assert (r.status_code, r.text) == (413, "too_large")
