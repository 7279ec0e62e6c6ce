"""deploy/grafana/: the dashboard is what its generator writes, and a real Prometheus (Debian's
``prometheus``; CI installs it, and a missing binary fails the test) scraping the running platform
during a simulated call answers every panel query with data and parses every alert expression.

The same call's data is then drawn as a user would see it: every panel's queries run as range
queries over the call's window, a static page (``dashboard_page/``, uPlot vendored in the admin
API's static files) draws the panels in the dashboard's grid, and Debian's headless Chromium
(Playwright from PyPI, never ``playwright install``) screenshots it to ``dashboard.png`` in
``$DIALTONE_ARTIFACTS`` (else the test's tmp dir). Without Chromium that test is skipped, except
where ``DIALTONE_REQUIRE_CHROMIUM=1`` or ``CI`` is set (CI installs it), which makes it a failure."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import math
import os
import re
import shutil
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
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
from playwright.async_api import Browser, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeout
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

DEPLOY = Path(__file__).resolve().parents[1]
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "dialtone.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PAGE = Path(__file__).resolve().parent / "dashboard_page"  # index.html, page.js, page.css
UPLOT = DEPLOY.parent / "services" / "admin-api" / "src" / "dialtone_admin" / "static" / "vendor" / "uplot"
CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright never downloads a browser of its own here
VIEWPORT = {"width": 1600, "height": 900}
STEP_S = 1  # range queries' step over the call's window
MIN_INK = 12  # pixels of a series' colour in a chart's plotting area: fewer is a blank chart
ACCOUNT_SID = "AC" + "0" * 31 + "7"
AUTH_TOKEN = "dashboard-test-auth-token-012345"
LINE = "+15005550091"
SCRAPE_S = 1
SCENARIO = Scenario(turns=[
    Turn(caller="When are you open on Monday?", agent="Nine to five on Monday.",
         tools=[ToolCall("opening_hours", {"day": "Monday"})]),
    Turn(caller="And on Tuesday?", agent="Nine to five on Tuesday too.",
         tools=[ToolCall("opening_hours", {"day": "Tuesday"})]),
])  # fmt: skip
# The agent's one tool, called twice a scrape apart: a tool's latency histogram appears at its first
# call, so only a second one gives rate() and the tool latency panel something to draw.
TOOLS = '''
from dialtone_tools import tool


@tool
def opening_hours(day: str) -> dict:
    """The opening hours of the shop on one day of the week.

    Args:
        day: the day, e.g. Monday.
    """
    return {"day": day, "open": "09:00", "close": "17:00"}
'''
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


def _grafana_expr(expr: str, dashboard: dict, *, interval_s: float, range_s: float) -> str:
    """``expr`` as Grafana sends it to Prometheus: ``$__interval`` is the step, ``$__rate_interval``
    max(step + scrape interval, 4 x scrape interval), ``$__range`` the window, and each template
    variable its current value (``All`` a match-anything regex)."""
    rate_s = max(interval_s + SCRAPE_S, 4 * SCRAPE_S)
    builtins = {
        "__rate_interval": f"{rate_s:g}s", "__interval_ms": f"{interval_s * 1000:g}",
        "__interval": f"{interval_s:g}s", "__range_ms": f"{range_s * 1000:.0f}",
        "__range_s": f"{range_s:.0f}", "__range": f"{range_s:.0f}s",
    }  # fmt: skip
    variables = dict(builtins)
    for var in (dashboard.get("templating") or {}).get("list") or []:
        value = (var.get("current") or {}).get("value", "")
        values = value if isinstance(value, list) else [value]
        if "$__all" in values:
            variables[var["name"]] = ".*"
        else:
            variables[var["name"]] = "(" + "|".join(values) + ")" if len(values) > 1 else "".join(values)
    for name in sorted(variables, key=len, reverse=True):  # $__interval_ms before $__interval
        for form in (f"${{{name}}}", f"[[{name}]]"):
            expr = expr.replace(form, variables[name])
        expr = re.sub(rf"\${re.escape(name)}\b", lambda _m, name=name: variables[name], expr)
    return expr


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
    assert "Bus transit" in [panel["title"] for panel in _panels(dashboard)]


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
    tools = tmp_root / "dashboard-tools" / "dashboard_tools.py"
    tools.parent.mkdir()
    tools.write_text(TOOLS)
    async with FakeTwilioApi(ACCOUNT_SID, AUTH_TOKEN) as twilio_api:
        p = Platform(
            data_dir=tmp_root / "dashboard-platform", ports=Ports.free(), nats_url=nats_url,
            database_url=database_url, realtime_url=realtime.url, openai_api_key="sk-test-dash",
            twilio_auth_token=AUTH_TOKEN, twilio_account_sid=ACCOUNT_SID, twilio_api_base_url=twilio_api.base_url,
            agents_dir=agents.parent, tools_module=str(tools),
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


@dataclass(frozen=True)
class CallWindow:
    start: float  # unix time, a scrape before Prometheus saw the five services up
    end: float  # unix time, two scrapes after the call hung up
    seconds: float  # how long placing the call took


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def call(platform: Platform, realtime: RealtimeSimulator, prometheus_url: str) -> CallWindow:
    """One simulated call (two tool calls, a Realtime error, and a refused media socket before it)
    while Prometheus scrapes every second; both dashboard tests read its data."""
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        await _wait_all_up(http, prometheus_url)
    start = time.time() - SCRAPE_S  # the window opens on Prometheus's first scrapes
    # A media socket with no signature: the gateway refuses it (403).
    with pytest.raises(InvalidStatus) as refused:
        await connect(platform.gateway_url.replace("http", "ws") + "/media/CA" + "0" * 32 + "/1/x")
    assert refused.value.response.status_code == 403
    placed = await dial(platform.gateway_url, AUTH_TOKEN, public_base_url=platform.public_base_url,
                        account_sid=ACCOUNT_SID, to=LINE)  # fmt: skip
    try:
        await placed.wait_quiet(since=0)
        # A Realtime error event the bridge absorbs (and counts), as a model answers a race.
        await realtime.sessions[-1].error(
            "conversation_already_has_active_response", "Conversation already has an active response."
        )
        last_tool_turn = max(i for i, turn in enumerate(SCENARIO.turns) if turn.tools)
        for i, turn in enumerate(SCENARIO.turns):
            await placed.say(turn.caller)
            await placed.wait_quiet()
            if turn.tools and i < last_tool_turn:
                await asyncio.sleep(SCRAPE_S + 0.3)  # a scrape between two tool calls
    finally:
        await placed.hangup()
    await asyncio.sleep(0.5)  # the bridge's and the writer's last counts
    await asyncio.sleep(2 * SCRAPE_S + 0.5)  # at least two scrapes after the call
    return CallWindow(start=start, end=time.time(), seconds=time.monotonic() - started)


@pytest.mark.e2e
@pytest.mark.asyncio(loop_scope="module")
async def test_every_panel_has_data_for_a_call_and_every_alert_parses(
    call: CallWindow, prometheus_url: str
) -> None:
    started = time.monotonic()
    dashboard = json.loads(DASHBOARD.read_text())
    failures: list[str] = []
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{prometheus_url}/api/v1/label/__name__/values") as r:
            names = set((await r.json())["data"])  # every metric name scraped
        panel_queries = 0
        for panel in _panels(dashboard):
            for target in panel["targets"]:
                expr = _grafana_expr(
                    target["expr"], dashboard, interval_s=SCRAPE_S, range_s=time.time() - call.start
                )
                panel_queries += 1
                body = await _query(http, prometheus_url, expr)
                if body.get("status") != "success":
                    failures.append(f"panel {panel['title']!r}: {expr} does not parse: {body.get('error')}")
                elif not any(math.isfinite(float(r["value"][1])) for r in body["data"]["result"]):
                    # NaN is no data too: a histogram_quantile() over buckets that never moved
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
        f"\ndashboard: a call in {call.seconds:.1f}s, then {panel_queries} panel queries and "
        f"{len(alerts)} alert expressions run in {elapsed:.1f}s"
    )
    assert panel_queries >= 20 and len(alerts) >= 6
    assert not failures, "\n".join(failures)


# ---- the dashboard drawn from that data, screenshotted by headless Chromium -------------------
@pytest.fixture(scope="module")
def chromium() -> str:
    if Path(CHROMIUM).is_file():
        return CHROMIUM
    message = f"Debian's chromium is not installed ({CHROMIUM}): apt-get install chromium"
    if os.environ.get("DIALTONE_REQUIRE_CHROMIUM") == "1" or os.environ.get("CI"):
        pytest.fail(message + " (CI installs it: a skip there would hide a dashboard that draws nothing)")
    pytest.skip(message)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        b = await playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            yield b
        finally:
            await b.close()


async def _query_range(
    http: aiohttp.ClientSession, url: str, expr: str, start: float, end: float, step: float
) -> dict:
    params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    async with http.get(f"{url}/api/v1/query_range", params=params) as r:
        return await r.json()


def _legend(legend_format: str, metric: dict[str, str]) -> str:
    """A series' name as Grafana writes it: ``{{label}}`` replaced, else the label set."""
    if legend_format and legend_format != "__auto":
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), legend_format).strip()
    labels = ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k != "__name__")
    return f"{metric.get('__name__', '')}{{{labels}}}"


def _layout(dashboard: dict) -> list[dict]:
    """The panels in the order of the grid: rows, and a collapsed row's panels after it."""
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels") or [])
    return panels


async def _page_data(http: aiohttp.ClientSession, url: str, dashboard: dict, window: CallWindow) -> dict:
    """Every panel's queries as range queries over the call's window, aligned on one time axis."""
    start, end = math.floor(window.start), math.ceil(window.end)
    times = list(range(start, end + 1, STEP_S))
    panels = []
    for panel in _layout(dashboard):
        defaults = (panel.get("fieldConfig") or {}).get("defaults") or {}
        drawn = {"type": panel["type"], "title": panel["title"], "description": panel.get("description", ""),
                 "gridPos": panel["gridPos"], "unit": defaults.get("unit"), "min": defaults.get("min"),
                 "max": defaults.get("max"), "series": [], "empty": []}  # fmt: skip
        for target in panel.get("targets") or []:
            expr = _grafana_expr(target["expr"], dashboard, interval_s=STEP_S, range_s=end - start)
            body = await _query_range(http, url, expr, start, end, STEP_S)
            if body.get("status") != "success":
                raise AssertionError(f"panel {panel['title']!r}: {expr}: {body.get('error')}")
            if not any(math.isfinite(float(v)) for r in body["data"]["result"] for _, v in r["values"]):
                drawn["empty"].append(expr)  # a query that gives its panel nothing to draw
            for result in body["data"]["result"]:
                values: list[float | None] = [None] * len(times)
                for t, v in result["values"]:
                    i = round((float(t) - start) / STEP_S)
                    if 0 <= i < len(times) and math.isfinite(float(v)):
                        values[i] = float(v)
                name = _legend(target.get("legendFormat", ""), result["metric"])
                drawn["series"].append(
                    {"name": name, "ref": target.get("refId"), "expr": expr, "values": values}
                )
        panels.append(drawn)
    return {
        "title": dashboard["title"], "from": start, "to": end, "step": STEP_S, "times": times, "panels": panels,
        "source": "Panels of deploy/grafana/dashboards/dialtone.json over a real Prometheus's data for one "
                  "simulated call, drawn by deploy/tests/test_dashboard.py (Grafana's grid and units, uPlot).",
    }  # fmt: skip


def _write_page(data: dict, work: Path, png: Path) -> Path:
    """The page with ``data`` embedded, its script, styles and uPlot, in ``work``; ``png``'s folder."""
    work.mkdir(parents=True, exist_ok=True)
    png.parent.mkdir(parents=True, exist_ok=True)
    for source in (PAGE / "page.js", PAGE / "page.css", UPLOT / "uPlot.iife.min.js", UPLOT / "uPlot.min.css"):
        shutil.copyfile(source, work / source.name)
    embedded = json.dumps(data).replace("</", "<\\/")
    (work / "index.html").write_text(
        (PAGE / "index.html").read_text().replace("__DASHBOARD_DATA__", embedded)
    )
    return work / "index.html"


async def _render(browser: Browser, data: dict, work: Path, png: Path) -> tuple[list[dict], list[str]]:
    """Draw ``data`` with the page in headless Chromium and screenshot the full page to ``png``:
    what each panel says it drew, and every console error, page error and failed request."""
    index = _write_page(data, work, png)
    errors: list[str] = []
    context = await browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    try:
        page = await context.new_page()
        page.on("console", lambda m: errors.append(f"console error: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url} ({r.failure})"))
        await page.goto(index.as_uri())
        try:
            await page.wait_for_function("document.body.dataset.ready === '1'", timeout=10_000)
        except PlaywrightTimeout:
            raise AssertionError("the page never finished drawing:\n" + "\n".join(errors)) from None
        drawn = await page.evaluate(
            """() => [...document.querySelectorAll('section.panel')].map((el) => ({
                title: el.dataset.title, type: el.dataset.type, error: el.dataset.error ?? null,
                series: Number(el.dataset.series ?? 0), points: Number(el.dataset.points ?? 0),
                ink: el.dataset.ink === undefined ? null : Number(el.dataset.ink),
                value: el.dataset.value ?? null, text: el.querySelector('.body').innerText,
                charts: el.querySelectorAll('canvas').length,
            }))"""
        )
        await page.screenshot(path=str(png), full_page=True)
    finally:
        await context.close()
    return drawn, errors


def _judge(data: dict, drawn: list[dict]) -> list[str]:
    """What a user would notice: a chart with no line, a stat with no number, a panel missing."""
    expected = [p for p in data["panels"] if p["type"] != "row"]
    failures = []
    if [p["title"] for p in drawn] != [p["title"] for p in expected]:
        failures.append(
            f"panels drawn {[p['title'] for p in drawn]}, expected {[p['title'] for p in expected]}"
        )
    for panel in drawn:
        what = f"panel {panel['title']!r} ({panel['type']})"
        if panel["error"]:
            failures.append(f"{what}: {panel['error']}")
        elif panel["type"] in ("stat", "gauge", "bargauge"):
            try:
                number = float(panel["value"])
            except (TypeError, ValueError):
                number = math.nan
            if not math.isfinite(number) or not re.search(r"\d", panel["text"]):
                failures.append(f"{what} shows no number: {panel['text']!r} (no data)")
        elif panel["series"] < 1 or panel["points"] < 1:
            failures.append(f"{what} drew no series with points: {panel['text']!r} (no data)")
        elif panel["charts"] < 1 or (panel["ink"] or 0) < MIN_INK:
            failures.append(f"{what}: its chart is blank ({panel['ink']} pixels of its series' colours)")
    return failures


def _png_size(png: Path) -> tuple[int, int]:
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{png} is not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.mark.e2e
@pytest.mark.asyncio(loop_scope="module")
async def test_the_dashboard_drawn_from_the_calls_data_shows_every_panel(
    call: CallWindow,
    prometheus_url: str,
    browser: Browser,
    tmp_path: Path,
    deploy_report: Callable[[str], None],
) -> None:
    started = time.monotonic()
    dashboard = json.loads(DASHBOARD.read_text())
    async with aiohttp.ClientSession() as http:
        data = await _page_data(http, prometheus_url, dashboard, call)
    queried = time.monotonic()
    artifacts = os.environ.get("DIALTONE_ARTIFACTS")
    png = (Path(artifacts) if artifacts else tmp_path) / "dashboard.png"
    drawn, errors = await _render(browser, data, tmp_path / "page", png)
    elapsed = time.monotonic() - started
    deploy_report(
        f"dashboard screenshot: {png} ({len(drawn)} panels over a {call.seconds:.1f}s call, "
        f"{len(data['times'])} points a series; range queries {queried - started:.1f}s, "
        f"drawing and screenshot {elapsed - (queried - started):.1f}s)"
    )
    print(f"\ndashboard screenshot: {png}")
    failures = _judge(data, drawn) + errors
    failures += [
        f"panel {p['title']!r}: {expr} has no data over the call"
        for p in data["panels"]
        for expr in p["empty"]
    ]
    assert len(drawn) >= 15  # every panel but the rows (the titles are checked one by one)
    assert not failures, "\n".join(failures)
    width, height = _png_size(png)
    assert width == VIEWPORT["width"] and height >= 1500, (width, height)  # the whole grid, 74 rows
    assert png.stat().st_size > 50_000  # a page of charts, not an empty one


@pytest.mark.e2e
@pytest.mark.asyncio(loop_scope="module")
async def test_a_panel_without_data_is_noticed(browser: Browser, tmp_path: Path) -> None:
    """The drawn-page checks themselves: panels with no series, only empty ones, or whose points
    all fall outside the chart fail them; the others pass."""
    times = list(range(1_700_000_000, 1_700_000_020))
    line = [float(i % 5) for i in range(len(times))]
    grid = {"h": 8, "w": 12, "x": 0, "y": 0}

    def panel(
        kind: str, title: str, *series: list[float | None], y: int, low: float = 0, high: float | None = None
    ) -> dict:
        return {"type": kind, "title": title, "description": "", "unit": "short", "min": low, "max": high,
                "gridPos": {**grid, "y": y}, "series": [{"name": f"s{i}", "values": v} for i, v in enumerate(series)]}  # fmt: skip

    data = {
        "title": "Checks", "from": times[0], "to": times[-1], "step": 1, "times": times, "source": "synthetic",
        "panels": [
            panel("timeseries", "drawn", line, y=0),
            panel("stat", "a number", line, y=8),
            panel("timeseries", "no series", y=16),
            panel("timeseries", "only empty series", [None] * len(times), y=24),
            panel("stat", "no number", [None] * len(times), y=32),
            panel("timeseries", "off its scale", line, y=40, low=100, high=200),  # points, none in sight
        ],
    }  # fmt: skip
    drawn, errors = await _render(browser, data, tmp_path / "page", tmp_path / "checks.png")
    assert not errors
    failures = _judge(data, drawn)
    titles = [p["title"] for p in data["panels"]]
    flagged = {title for title in titles if any(f"panel {title!r}" in f for f in failures)}
    assert flagged == {"no series", "only empty series", "no number", "off its scale"}, failures
    assert sum("no data" in f for f in failures) == 3 and sum("blank" in f for f in failures) == 1, failures
