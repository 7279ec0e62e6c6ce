"""Schemathesis against the admin API's own OpenAPI document, over real HTTP, with the real
PostgreSQL behind it and the fake Twilio API behind ``POST /calls``: no request may get a 5xx, and
every response must be one the document declares, in the shape it declares.

Hypothesis generates valid and invalid requests (NUL bytes included); the edge values a generator
rarely hits (dates that leave the calendar once in UTC, integers past int64, cursors naming them,
searches of nothing but operators) are sent as explicit cases. The run is derandomized and bounded.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator

import nats
import pytest
import schemathesis
import uvicorn
from dialtone_admin.app import create_app
from dialtone_admin.settings import AdminSettings
from dialtone_common.embedded import free_port
from dialtone_proto import subjects
from dialtone_proto.evals import EvalAccepted
from dialtone_sim.twilio_api import FakeTwilioApi
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

TOKEN = "test-admin-token-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TWILIO_SID = "AC" + "3" * 32
TWILIO_TOKEN = "twilio-token-" + uuid.uuid4().hex
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]


class _ServedApi:
    """The admin API under uvicorn on a thread of its own, with the fake Twilio API on the same loop."""

    def __init__(self, database_url: str, nats_url: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The fuzzer signs in with thousands of wrong tokens from one address: the throttle (tested
        # on its own) would answer everything after them with 429.
        self._settings = {
            "database_url": database_url, "nats_url": nats_url, "admin_token": TOKEN,
            "auth_failures_per_address": 1_000_000, "auth_failures_global": 1_000_000,
        }  # fmt: skip
        self._server: uvicorn.Server | None = None
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="admin-api", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start()
            self._failed = exc

    async def _serve(self) -> None:
        # A test worker on the bus that refuses every run (it has no scenarios): POST /tests/runs
        # gets the worker's answer, as it would from dialtone_dev.eval_worker.
        worker = await nats.connect(self._settings["nats_url"], name="fuzz-eval-worker")

        async def refuse(msg) -> None:
            await msg.respond(EvalAccepted(accepted=False, reason="no scenarios match").model_dump_json().encode())

        await worker.subscribe(subjects.EVAL_START, queue=subjects.EVAL_QUEUE, cb=refuse)
        try:
            await self._serve_api()
        finally:
            await worker.close()

    async def _serve_api(self) -> None:
        async with FakeTwilioApi(TWILIO_SID, TWILIO_TOKEN) as twilio:
            settings = AdminSettings(
                **self._settings, twilio_account_sid=TWILIO_SID, twilio_auth_token=TWILIO_TOKEN,
                twilio_api_base_url=twilio.base_url, outbound_from_number="+15005550006",
            )
            config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port, log_level="warning")
            self._server = uvicorn.Server(config)
            await self._server.serve()

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not (self._server is not None and self._server.started):
            assert self._failed is None, f"the admin API did not start: {self._failed!r}"
            assert self._thread.is_alive() and time.monotonic() < deadline, "the admin API did not start"
            time.sleep(0.05)  # polling interval

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self._thread.join(30)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def served_api(database_url: str, nats_url: str, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[str]:
    # The Twilio SDK would send requests to a regional host if these were set.
    monkeypatch_module.delenv("TWILIO_EDGE", raising=False)
    monkeypatch_module.delenv("TWILIO_REGION", raising=False)
    api = _ServedApi(database_url, nats_url)
    api.start()
    try:
        yield api.url
    finally:
        api.stop()


EDGE_STRINGS = [
    "\x00", "CA\x00", "a\x00b",
    "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "0001-01-01", "9999-12-31T23:59:59.999999Z",
    "-" * 40, "!" * 40, "- " * 40, '"' * 40, "+15551234567\n", "\n", " ", "",
]
EDGE_INTEGERS = [2**63, 2**63 - 1, -(2**63), -(2**63) - 1, 2**64, 0, -1]


def _schema() -> schemathesis.BaseSchema:
    """The document the API serves at /openapi.json (an app that is never started makes it)."""
    document = create_app(AdminSettings(database_url="postgresql://unused", admin_token=TOKEN)).openapi()
    config = schemathesis.Config.from_dict(
        {
            # Edge values mixed into what Hypothesis draws, for every string and integer anywhere.
            "dictionaries": {"edge-strings": {"values": EDGE_STRINGS}, "edge-integers": {"values": EDGE_INTEGERS}},
            "generation": {
                "mode": "all",
                "deterministic": True,
                "database": "none",
                "allow-x00": True,
                # The token is ours to send (AUTH); the auth tests are in test_api.py.
                "with-security-parameters": False,
                "dictionaries": {
                    "string": {"dictionary": "edge-strings", "probability": 0.25},
                    "integer": {"dictionary": "edge-integers", "probability": 0.25},
                },
            },
            "phases": {"stateful": {"enabled": False}},
        }
    )
    # The live streams (and the test runs' progress) never end (the e2e dashboard test reads them); an export is a list page's
    # rows in another format, fuzzed through GET /sessions.
    return (
        schemathesis.openapi.from_dict(document, config=config)
        .exclude(path="/live/stream")
        .exclude(path="/live/{call_sid}/listen")
        .exclude(path="/tests/stream")
        .exclude(path="/sessions/export")
    )


schema = _schema()


@schema.parametrize()
@settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
def test_generated_requests_get_no_5xx_and_declared_responses(served_api: str, case: schemathesis.Case) -> None:
    case.call_and_validate(base_url=served_api, headers=AUTH, checks=CHECKS)


def _cursor(started: str, row_id: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([started, row_id]).encode()).decode().rstrip("=")


EDGES = [
    # (method, path, case arguments, status expected)
    ("GET", "/sessions", {"query": {"since": "0001-01-01T00:00:00+14:00"}}, 422),
    ("GET", "/sessions", {"query": {"until": "9999-12-31T23:59:59-14:00"}}, 422),
    ("GET", "/sessions", {"query": {"since": "0001-01-01T00:00:00Z", "until": "9999-12-31T23:59:59Z"}}, 200),
    ("GET", "/sessions", {"query": {"cursor": _cursor("2025-03-01T12:00:00+00:00", 2**63)}}, 400),
    ("GET", "/sessions", {"query": {"cursor": _cursor("2025-03-01T12:00:00+00:00", 2**63 - 1)}}, 200),
    ("GET", "/sessions", {"query": {"cursor": _cursor("0001-01-01T00:00:00+14:00", 1)}}, 400),
    ("GET", "/sessions", {"query": {"limit": 2**63}}, 422),
    ("GET", "/sessions", {"query": {"limit": -(2**63) - 1}}, 422),
    ("GET", "/sessions", {"query": {"q": "-" * 40}}, 200),
    ("GET", "/sessions", {"query": {"q": "!" * 40}}, 200),
    ("GET", "/sessions", {"query": {"q": "-(" * 100}}, 200),
    ("GET", "/sessions", {"query": {"q": "\x00", "outcome": "\x00", "agent": "\x00"}}, 422),
    ("GET", "/sessions/{call_sid}", {"path_parameters": {"call_sid": "CA\x00"}}, 422),
    ("GET", "/sessions/{call_sid}", {"path_parameters": {"call_sid": "CA" + "0" * 32}}, 404),
    ("POST", "/calls", {"body": {"to": "+15551234567\n"}}, 422),
    ("POST", "/calls", {"body": {"to": "+15551234567", "variables": {"name": "\x00"}}}, 422),
    ("POST", "/calls", {"body": {"to": "+15551234567", "machine_detection": 2**70}}, 422),
    ("POST", "/calls", {"body": {"to": "+15551234567", "variables": {"name": "Ann"}}}, 201),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "expected"), EDGES)
def test_edge_values_get_the_documented_answer(
    served_api: str, method: str, path: str, kwargs: dict, expected: int
) -> None:
    case = schema[path][method].Case(**kwargs)
    response = case.call_and_validate(base_url=served_api, headers=AUTH, checks=CHECKS)
    assert response.status_code == expected, response.text
