"""deploy/grafana/: the dashboard is what its generator writes, and a real Prometheus (Debian's
``prometheus``; CI installs it, and a missing binary fails the test) scraping the running platform
during a simulated call answers every panel query with data and parses every alert expression."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import yaml
from dialtone_common.embedded import embedded_nats, free_port
from dialtone_dev.platform import Platform, Ports
from dialtone_sim.realtime import RealtimeSimulator
from dialtone_sim.scenario import Scenario, ToolCall, Turn
from dialtone_sim.twilio_api import FakeTwilioApi
from dialtone_sim.twilio_edge import dial
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

DEPLOY = Path(__file__).resolve().parents[1]
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "dialtone.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ACCOUNT_SID = "AC" + "0" * 31 + "7"
AUTH_TOKEN = "dashboard-test-auth-token-012345"
LINE = "+15005550091"
SCRAPE_S = 1
SCENARIO = Scenario(turns=[
    Turn(caller="Hello there.", agent="Hi, how can I help?"),
    Turn(caller="When are you open on Monday?", agent="Nine to five on Monday.",
         tools=[ToolCall("opening_hours", {"day": "Monday"})]),
])  # fmt: skip
AGENT_TOML = f"""
default = true
numbers = ["{LINE}"]
tools = "*"
greeting = "Dashboard line, hello."
[limits]
idle_prompt_s = 0
max_duration_s = 0
"""
_METRIC = re.compile(r"\b(?:dialtone_|process_)[a-z0-9_]+")


def _generator():
    spec = importlib.util.spec_from_file_location("dialtone_dashboard_generate", GRAFANA / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels") or [])  # collapsed rows
    return [p for p in panels if p.get("type") != "row"]


def _alert_exprs() -> dict[str, str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


# ---- the JSON is the generator's --------------------------------------------------------------
@pytest.mark.unit
def test_checked_in_dashboard_is_what_the_generator_writes() -> None:
    assert DASHBOARD.read_text() == _generator().render(), (
        "deploy/grafana/dashboards/dialtone.json differs from its generator: "
        "run `uv run python deploy/grafana/generate.py` and commit the result"
    )


@pytest.mark.unit
def test_grafana_provisions_the_dashboard_from_prometheus() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uids = {ds["uid"] for ds in datasources["datasources"] if ds["type"] == "prometheus"}
    for panel in _panels(dashboard):
        assert panel["datasource"]["uid"] in uids, panel["title"]
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dialtone.yml").read_text())[
        "providers"
    ]
    assert [p["options"]["path"] for p in providers] == ["/var/lib/grafana/dashboards"]
    assert "bus transit" in dashboard["description"]  # not exported yet: the dashboard says so


# ---- a real Prometheus scraping the platform during a call ------------------------------------
@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def realtime() -> AsyncIterator[RealtimeSimulator]:
    async with RealtimeSimulator(SCENARIO, api_key="sk-test-dash", speed=8.0) as sim:
        yield sim


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def platform(tmp_root: Path, database_url: str, realtime: RealtimeSimulator) -> AsyncIterator[Platform]:
    # A NATS of its own: on the session's NATS, the bridges of another platform still running in
    # this test session (the e2e tier's) would share the offer queue group and take this call.
    servers = contextlib.ExitStack()
    nats_url = await asyncio.to_thread(servers.enter_context, embedded_nats(tmp_root / "dashboard-nats"))
    agents = tmp_root / "dashboard-agents" / "dashboard"
    agents.mkdir(parents=True)
    (agents / "agent.toml").write_text(AGENT_TOML)
    (agents / "system.md").write_text("You are the dashboard test agent of Acme.")
    async with FakeTwilioApi(ACCOUNT_SID, AUTH_TOKEN) as twilio_api:
        p = Platform(
            data_dir=tmp_root / "dashboard-platform", ports=Ports.free(), nats_url=nats_url,
            database_url=database_url, realtime_url=realtime.url, openai_api_key="sk-test-dash",
            twilio_auth_token=AUTH_TOKEN, twilio_account_sid=ACCOUNT_SID, twilio_api_base_url=twilio_api.base_url,
            agents_dir=agents.parent, tools_module=str(DEPLOY.parent / "tests" / "e2e" / "e2e_tools.py"),
        )  # fmt: skip
        try:
            async with p:
                yield p
        finally:
            await asyncio.to_thread(servers.close)


@pytest.fixture(scope="module")
def prometheus_url(platform: Platform, tmp_root: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: apt-get install prometheus (CI installs it)")
    ports = platform.ports
    targets = {"media-gateway": ports.gateway, "realtime-bridge": ports.bridge, "tool-runner": ports.tools,
               "transcript-writer": ports.writer, "admin-api": ports.admin}  # fmt: skip
    work = tmp_root / "dashboard-prometheus"
    work.mkdir()
    config = {
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for job, port in targets.items()
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (work / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def _query(http: aiohttp.ClientSession, url: str, expr: str) -> dict:
    async with http.get(f"{url}/api/v1/query", params={"query": expr}) as r:
        return await r.json()


async def _wait_all_up(http: aiohttp.ClientSession, url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            body = await _query(http, url, "up == 1")
            if body.get("status") == "success" and len(body["data"]["result"]) == 5:
                return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"Prometheus did not scrape all five services up within {timeout}s")
        await asyncio.sleep(0.2)


@pytest.mark.e2e
@pytest.mark.asyncio(loop_scope="module")
async def test_every_panel_has_data_for_a_call_and_every_alert_parses(
    platform: Platform, realtime: RealtimeSimulator, prometheus_url: str
) -> None:
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        await _wait_all_up(http, prometheus_url)
        # A media socket with no signature: the gateway refuses it (403).
        with pytest.raises(InvalidStatus) as refused:
            await connect(platform.gateway_url.replace("http", "ws") + "/media/CA" + "0" * 32 + "/1/x")
        assert refused.value.response.status_code == 403
        call = await dial(platform.gateway_url, AUTH_TOKEN, public_base_url=platform.public_base_url,
                          account_sid=ACCOUNT_SID, to=LINE)  # fmt: skip
        try:
            await call.wait_quiet(since=0)
            # A Realtime error event the bridge absorbs (and counts), as a model answers a race.
            await realtime.sessions[-1].error(
                "conversation_already_has_active_response", "Conversation already has an active response."
            )
            for turn in SCENARIO.turns:
                await call.say(turn.caller)
                await call.wait_quiet()
        finally:
            await call.hangup()
        await asyncio.sleep(0.5)  # the bridge's and the writer's last counts
        await asyncio.sleep(2 * SCRAPE_S + 0.5)  # at least two scrapes after the call

        failures: list[str] = []
        async with http.get(f"{prometheus_url}/api/v1/label/__name__/values") as r:
            names = set((await r.json())["data"])  # every metric name scraped
        panel_queries = 0
        for panel in _panels(json.loads(DASHBOARD.read_text())):
            for target in panel["targets"]:
                expr = target["expr"]
                panel_queries += 1
                body = await _query(http, prometheus_url, expr)
                if body.get("status") != "success":
                    failures.append(f"panel {panel['title']!r}: {expr} does not parse: {body.get('error')}")
                elif not body["data"]["result"]:
                    failures.append(f"panel {panel['title']!r}: {expr} has no data for the call")
                missing = set(_METRIC.findall(expr)) - names
                if missing:
                    failures.append(f"panel {panel['title']!r}: no service exported {sorted(missing)}")
        alerts = _alert_exprs()
        for name, expr in alerts.items():
            body = await _query(http, prometheus_url, expr)
            if body.get("status") != "success":
                failures.append(f"alert {name}: {expr} does not parse: {body.get('error')}")
    elapsed = time.monotonic() - started
    print(
        f"\ndashboard: {panel_queries} panel queries and {len(alerts)} alert expressions run in {elapsed:.1f}s"
    )
    assert panel_queries >= 20 and len(alerts) >= 6
    assert not failures, "\n".join(failures)
