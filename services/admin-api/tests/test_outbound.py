"""``POST /calls``: outbound calls placed through the official Twilio client at a fake Twilio API."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from dialtone_admin.app import create_app
from dialtone_admin.outbound import voice_url
from dialtone_admin.settings import AdminSettings
from dialtone_sim.twilio_api import FakeTwilioApi

pytestmark = pytest.mark.integration

TOKEN = "test-admin-token-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SID = "AC" + "1" * 32
TWILIO_TOKEN = "twilio-token-" + uuid.uuid4().hex
PUBLIC = "https://dial.example.com"
FROM = "+15005550006"


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeTwilioApi]:
    # The SDK would send requests to a regional host if these were set.
    monkeypatch.delenv("TWILIO_EDGE", raising=False)
    monkeypatch.delenv("TWILIO_REGION", raising=False)
    async with FakeTwilioApi(SID, TWILIO_TOKEN) as api:
        yield api


@pytest.fixture
def make_client(database_url: str, nats_url: str, fake: FakeTwilioApi):
    """``async with make_client(**settings) as client``: the admin API with Twilio pointed at the fake."""

    def make(**overrides: Any):
        settings = {
            "database_url": database_url, "nats_url": nats_url, "admin_token": TOKEN,
            "twilio_account_sid": SID, "twilio_auth_token": TWILIO_TOKEN,
            "twilio_api_base_url": fake.base_url, "public_base_url": PUBLIC + "/",
            "outbound_from_number": FROM, **overrides,
        }
        return _Client(create_app(AdminSettings(**settings)))

    return make


class _Client:
    def __init__(self, app) -> None:  # type: ignore[no-untyped-def]
        self.app = app

    async def __aenter__(self) -> httpx.AsyncClient:
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        self._http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://admin")
        return self._http

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()
        await self._lifespan.__aexit__(*exc)


async def test_places_the_call_with_agent_variables_callbacks_and_amd(make_client, fake: FakeTwilioApi) -> None:
    body = {"to": "+15551234567", "agent": "reminders", "variables": {"name": "Ann Lee", "when": "Mon 9:00 & co"}}
    async with make_client() as client:
        r = await client.post("/calls", json=body, headers=AUTH)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["call_sid"] in fake.calls and out["call_sid"].startswith("CA")
    assert out == {"call_sid": out["call_sid"], "status": "queued", "to": "+15551234567", "from": FROM,
                   "agent": "reminders"}
    call = fake.calls[out["call_sid"]]
    assert (call.to, call.from_, call.twiml) == ("+15551234567", FROM, None)
    url = urlsplit(call.url or "")
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{PUBLIC}/twilio-voice"
    assert parse_qs(url.query) == {"agent": ["reminders"], "v_name": ["Ann Lee"], "v_when": ["Mon 9:00 & co"]}
    assert call.status_callback == f"{PUBLIC}/twilio-status"
    assert call.status_callback_event == ["initiated", "ringing", "answered", "completed"]
    assert call.machine_detection == "Enable" and call.async_amd is None
    form = fake.requests[-1].form
    assert form["Method"] == ["POST"] and form["StatusCallbackMethod"] == ["POST"]


async def test_caller_id_from_the_body_and_no_machine_detection(make_client, fake: FakeTwilioApi) -> None:
    body = {"to": "+442071234567", "from": "+15005550009", "machine_detection": False}
    async with make_client() as client:
        r = await client.post("/calls", json=body, headers=AUTH)
    assert r.status_code == 201, r.text
    assert r.json()["agent"] is None and r.json()["from"] == "+15005550009"
    call = fake.calls[r.json()["call_sid"]]
    assert call.from_ == "+15005550009" and call.machine_detection is None
    assert call.url == f"{PUBLIC}/twilio-voice"  # no agent: the gateway's default agent answers


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
async def test_needs_the_admin_token(make_client, fake: FakeTwilioApi, headers: dict) -> None:
    async with make_client() as client:
        r = await client.post("/calls", json={"to": "+15551234567"}, headers=headers)
    assert r.status_code == 401 and fake.calls == {}


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({"to": "5551234567"}, "E.164"),
        ({"to": "+1 555 123 4567"}, "E.164"),
        ({"to": "+0551234567"}, "E.164"),
        ({"to": "+15551234567\n"}, "E.164"),  # Python's `$` matches before a final newline
        ({"to": "+15551234567", "from": "+15005550006\n"}, "from must be an E.164"),
        ({"to": "+15551234567", "agent": "support\n"}, "agent must be"),
        ({"to": "+15551234567", "variables": {"name\n": "Ann"}}, "variable name 'name"),
        ({"to": "+15551234567", "variables": {"name": "A\x00nn"}}, "without NUL"),
        ({"to": "+15551234567", "from": "caller"}, "from must be an E.164"),
        ({"to": "+15551234567", "variables": {"first-name": "Ann"}}, "variable name 'first-name'"),
        ({"to": "+15551234567", "variables": {"": "Ann"}}, "variable name ''"),
        ({"to": "+15551234567", "variables": {"note": "x" * 501}}, "longer than 500"),
        ({"to": "+15551234567", "variables": {"n": 5}}, "valid string"),
        ({"to": "+15551234567", "agent": "../etc"}, "agent must be"),
        ({"to": "+15551234567", "machine_detection": "maybe"}, "valid boolean"),
        ({"to": "+15551234567", "machine_detection": 0}, "valid boolean"),
        ({"to": "+15551234567", "twiml": "<Response/>"}, "Extra inputs"),
        ({}, "Field required"),
    ],
)
async def test_bad_requests_are_422_with_a_clear_message(make_client, fake, body: dict, complaint: str) -> None:
    async with make_client() as client:
        r = await client.post("/calls", json=body, headers=AUTH)
    assert r.status_code == 422, r.text
    assert complaint in r.text
    assert fake.calls == {}


async def test_a_lone_surrogate_in_a_variable_is_422_not_500(make_client, fake: FakeTwilioApi) -> None:
    # JSON may carry "\ud800"; UTF-8 (the voice URL, the error echo) cannot.
    body = b'{"to": "+15551234567", "variables": {"name": "\\ud800"}}'
    async with make_client() as client:
        r = await client.post("/calls", content=body, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert "must be UTF-8 text" in r.json()["detail"][0]["msg"]
    assert fake.calls == {}


async def test_without_a_caller_id_is_422(make_client, fake: FakeTwilioApi) -> None:
    async with make_client(outbound_from_number=None) as client:
        r = await client.post("/calls", json={"to": "+15551234567"}, headers=AUTH)
    assert r.status_code == 422
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", "from"] and "OUTBOUND_FROM_NUMBER" in error["msg"]
    assert fake.calls == {}


@pytest.mark.parametrize("missing", ["twilio_account_sid", "twilio_auth_token"])
async def test_without_twilio_credentials_is_503(make_client, fake: FakeTwilioApi, missing: str) -> None:
    async with make_client(**{missing: None}) as client:
        r = await client.post("/calls", json={"to": "+15551234567"}, headers=AUTH)
    assert r.status_code == 503
    assert r.json()["detail"] == "outbound calls need TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"
    assert fake.requests == []


@pytest.mark.parametrize(
    ("overrides", "twilio_status", "code"),
    [
        ({"twilio_account_sid": "AC" + "2" * 32}, 401, 20003),  # credentials Twilio does not know
        ({"twilio_auth_token": "not-the-token"}, 401, 20003),
    ],
)
@pytest.mark.expect_sim_errors(r"twilio api: POST /2010-04-01/Accounts/AC\d+/Calls.json: bad credentials \(401\)")
async def test_twilio_refusal_is_502_with_its_code_and_no_secret(
    make_client, fake: FakeTwilioApi, overrides: dict, twilio_status: int, code: int
) -> None:
    async with make_client(**overrides) as client:
        r = await client.post("/calls", json={"to": "+15551234567"}, headers=AUTH)
    assert r.status_code == 502, r.text
    detail = r.json()["detail"]
    assert (detail["twilio_status"], detail["twilio_code"]) == (twilio_status, code)
    assert "Authentication Error" in detail["twilio_message"]
    assert TWILIO_TOKEN not in r.text and "not-the-token" not in r.text
    assert fake.calls == {}


async def test_twilio_unreachable_is_502(make_client) -> None:
    async with make_client(twilio_api_base_url="http://127.0.0.1:9") as client:  # discard port: refused
        r = await client.post("/calls", json={"to": "+15551234567"}, headers=AUTH)
    assert r.status_code == 502 and "unreachable" in r.json()["detail"]["message"]


@pytest.mark.unit
def test_voice_url_encodes_the_query() -> None:
    assert voice_url("https://h/", None, {}) == "https://h/twilio-voice"
    url = voice_url("https://h", "a-1", {"q": "a=b&c d", "x": "é"})
    assert parse_qs(urlsplit(url).query) == {"agent": ["a-1"], "v_q": ["a=b&c d"], "v_x": ["é"]}
