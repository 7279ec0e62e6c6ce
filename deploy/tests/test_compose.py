"""deploy/compose.yaml: the whole platform on one machine. No Docker engine runs here: the file is
validated against the compose specification's schema and read for what an operator relies on."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import DEPLOY, Service

pytestmark = pytest.mark.unit

COMPOSE = DEPLOY / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # merge keys (<<) resolved, as compose does


def _check_jsonschema(path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", path],
                          capture_output=True, text=True, timeout=120)


def test_the_compose_file_follows_the_compose_specification(tmp_path: Path) -> None:
    result = _check_jsonschema(str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr
    # the same check refuses a misspelt key, which compose would otherwise refuse only on a server
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("  restart: unless-stopped\n", "  restat: unless-stopped\n", 1))
    assert _check_jsonschema(str(broken)).returncode == 1


def test_every_service_runs_from_its_image_target(compose: dict[str, Any], services: tuple[Service, ...]) -> None:
    for service in services:
        spec = compose["services"][service.name]
        assert spec["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile", "target": service.name}
        assert spec["image"].endswith(f"/{service.name}:${{DIALTONE_VERSION:-latest}}")


def test_every_service_is_health_checked_restarted_and_limited(compose: dict[str, Any], services: tuple[Service, ...]) -> None:
    for name, spec in compose["services"].items():
        assert spec.get("restart") in ("unless-stopped", "always"), name
        assert {"cpus", "memory"} <= set(spec["deploy"]["resources"]["limits"]), name
        assert spec["healthcheck"]["test"], name
    for service in services:
        check = " ".join(compose["services"][service.name]["healthcheck"]["test"])
        assert f"http://127.0.0.1:{service.health_port}/healthz" in check, service.name


def test_dialtone_containers_are_locked_down(compose: dict[str, Any], services: tuple[Service, ...]) -> None:
    """Read-only root with a tmpfs on /tmp, no capabilities, no privilege escalation; the user is
    the image's (uid 10001), never overridden to root."""
    for service in services:
        spec = compose["services"][service.name]
        assert spec["read_only"] is True and any(t.split(":")[0] == "/tmp" for t in spec["tmpfs"]), service.name
        assert spec["cap_drop"] == ["ALL"] and "cap_add" not in spec, service.name
        assert "no-new-privileges:true" in spec["security_opt"], service.name
        assert spec.get("user") in (None, "10001", "10001:10001"), service.name


def test_services_are_reachable_from_the_network_and_find_their_servers(compose: dict[str, Any], services: tuple[Service, ...]) -> None:
    for service in services:
        spec = compose["services"][service.name]
        environment = spec["environment"]
        assert environment["NATS_URL"] == "nats://nats:4222", service.name
        assert environment["METRICS_HOST"] == "0.0.0.0", service.name
        if "host" in service.env:
            assert any(environment.get(n) == "0.0.0.0" for n in service.env["host"]), service.name
        needs_db = service.settings.model_fields.get("database_url")
        if needs_db is not None:
            assert re.fullmatch(r"postgresql://.+@postgres:5432/.+", environment["DATABASE_URL"]), service.name
            assert spec["depends_on"]["postgres"] == {"condition": "service_healthy"}
        assert spec["depends_on"]["nats"] == {"condition": "service_healthy"}, service.name
        unknown = set(environment) - {n for names in service.env.values() for n in names}
        assert not unknown, f"{service.name} reads no setting named {unknown}"


def test_calls_get_time_to_finish_when_the_gateway_or_a_bridge_stops(compose: dict[str, Any]) -> None:
    for name in ("media-gateway", "realtime-bridge"):
        assert compose["services"][name]["stop_grace_period"] == "90s"


def test_nats_keeps_jetstream_and_postgresql_its_data_in_volumes(compose: dict[str, Any]) -> None:
    nats = compose["services"]["nats"]
    assert "--jetstream" in nats["command"]
    store = nats["command"][nats["command"].index("--store_dir") + 1]
    assert f"nats-data:{store}" in nats["volumes"]
    assert "postgres-data:/var/lib/postgresql/data" in compose["services"]["postgres"]["volumes"]
    assert {"nats-data", "postgres-data"} <= set(compose["volumes"])


def test_only_caddy_is_published_and_it_proxies_to_the_two_http_services(compose: dict[str, Any], services: tuple[Service, ...]) -> None:
    published = {name for name, spec in compose["services"].items() if spec.get("ports")}
    assert published == {"caddy"}
    caddy = compose["services"]["caddy"]
    assert "./Caddyfile:/etc/caddy/Caddyfile:ro" in caddy["volumes"]
    ports = {s.name: s.health_port for s in services}
    assert caddy["environment"]["GATEWAY_UPSTREAM"] == f"media-gateway:{ports['media-gateway']}"
    assert caddy["environment"]["ADMIN_UPSTREAM"] == f"admin-api:{ports['admin-api']}"


def test_the_admin_api_believes_forwarded_headers_from_the_compose_network_only(compose: dict[str, Any]) -> None:
    subnet = compose["networks"]["dialtone"]["ipam"]["config"][0]["subnet"]
    assert compose["services"]["admin-api"]["environment"]["FORWARDED_ALLOW_IPS"] == subnet
