"""deploy/prometheus/: the scrape configuration and the alert rules, checked by Prometheus's own
``promtool`` (Debian: ``apt-get install prometheus``; CI installs it, and a missing promtool fails
these tests rather than skipping them), and held against the metrics the services export."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from pathlib import Path

import prometheus_client
import pytest
import yaml
from prometheus_client import CollectorRegistry

pytestmark = pytest.mark.unit

DEPLOY = Path(__file__).resolve().parents[1]
PROMETHEUS = DEPLOY / "prometheus"
CONFIG = PROMETHEUS / "prometheus.yml"
ALERTS = PROMETHEUS / "alerts.yml"
ALERT_TESTS = Path(__file__).with_name("alerts_test.yml")
REQUIRED_ALERTS = {  # what an operator must be paged about, at least
    "DialtoneNoBridgeReady", "DialtoneCallsNotClaimed", "DialtoneRealtimeErrorRate", "DialtoneTurnLatencyHigh",
    "DialtoneWriterLag", "DialtoneServiceDown", "DialtoneAdminTokenGuessing", "DialtoneRecordingStoreFailing",
    "DialtoneGatewayMovesFailing",
}
_METRIC = re.compile(r"\bdialtone_[a-z0-9_]+")


def _promtool(*args: str, cwd: Path = DEPLOY) -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: apt-get install prometheus (CI installs it)")
    done = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def _exported(registry: CollectorRegistry) -> set[str]:
    """Every sample name ``registry`` exposes, labelled metrics with no sample yet included."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
    names = set()
    for family in registry.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def test_alert_rules_pass_promtool_check() -> None:
    out = _promtool("check", "rules", str(ALERTS))
    assert f"SUCCESS: {len(_rules())} rules found" in out


def test_scrape_config_passes_promtool_check() -> None:
    out = _promtool("check", "config", str(CONFIG))
    assert "SUCCESS" in out and "1 rule files found" in out


def test_each_alert_fires_when_it_should_and_only_then() -> None:
    """``promtool test rules``: series for each situation, and the alerts (labels and text) expected."""
    assert "SUCCESS" in _promtool("test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)


def test_the_alerts_an_operator_needs_are_there() -> None:
    names = {rule["alert"] for rule in _rules()}
    assert REQUIRED_ALERTS <= names, REQUIRED_ALERTS - names
    tested = set(re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text()))
    assert REQUIRED_ALERTS <= tested, f"alerts without a promtool test: {REQUIRED_ALERTS - tested}"
    for rule in _rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_every_metric_a_rule_uses_is_exported_by_a_service(services: tuple) -> None:
    exported: set[str] = set()
    for service in services:
        registry = importlib.import_module(f"{service.package}.metrics").REGISTRY
        assert isinstance(registry, CollectorRegistry), service.name
        assert "process_resident_memory_bytes" in _exported(registry), f"{service.name}: no process metrics"
        exported |= _exported(registry)
    used = {name for rule in _rules() for name in _METRIC.findall(rule["expr"])}
    assert used, "no rule uses a dialtone_ metric?"
    assert used <= exported, f"rules use metrics no service exports: {sorted(used - exported)}"


def test_prometheus_scrapes_each_service_on_its_port(services: tuple) -> None:
    """One job per service, named as the service (the rules' ``up{job=...}`` use the names),
    aimed at every container of the service (a DNS lookup of its compose name) on the port its
    ``/metrics`` is served on by default. test_compose holds the same jobs against compose.yaml."""
    jobs = {job["job_name"]: job for job in yaml.safe_load(CONFIG.read_text())["scrape_configs"]}
    assert set(jobs) == {s.name for s in services}
    for service in services:
        (lookup,) = jobs[service.name]["dns_sd_configs"]
        assert (lookup["names"], lookup["type"], lookup["port"]) == ([service.name], "A", service.health_port), service.name
    down = next(rule for rule in _rules() if rule["alert"] == "DialtoneServiceDown")
    assert set(re.search(r'job=~"([^"]+)"', down["expr"])[1].split("|")) == set(jobs)


def test_no_service_metric_lands_in_the_global_default_registry(services: tuple) -> None:
    """A metric made without ``registry=`` would be in the process-wide default registry, which
    no service serves: it would silently never reach Prometheus."""
    for service in services:
        importlib.import_module(f"{service.package}.metrics")
        importlib.import_module(f"{service.package}.main")
    strays = sorted(f.name for f in prometheus_client.REGISTRY.collect() if f.name.startswith("dialtone_"))
    assert strays == [], f"metrics outside the services' registries: {strays}"
