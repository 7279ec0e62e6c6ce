"""deploy/compose.yaml: the whole platform on one machine. No Docker engine runs here: the file is
validated against the compose specification's schema and read for what an operator relies on,
Prometheus and Grafana included: what they load is in the repository, and Prometheus scrapes
exactly the services compose runs (its configuration is checked by promtool in test_prometheus)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from dialtone_bridge.settings import BridgeSettings
from dialtone_gateway.settings import GatewaySettings

from .conftest import DEPLOY, Service

pytestmark = pytest.mark.unit

COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
# Where each container writes; each must be a volume or a tmpfs, the root filesystem being read-only.
RECORDINGS = "/var/lib/dialtone/recordings"
WRITES = {
    "nats": ["/data"],
    "postgres": ["/var/lib/postgresql/data", "/var/run/postgresql", "/tmp"],
    "caddy": ["/data", "/config", "/tmp"],
    "prometheus": ["/prometheus"],
    "grafana": ["/var/lib/grafana", "/tmp"],
}


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
    """Compose kills a container at the end of stop_grace_period: the drain (DRAIN_GRACE_S) and a
    hand-off or Twilio's goodbye after it must fit inside."""
    for name, settings in (("media-gateway", GatewaySettings), ("realtime-bridge", BridgeSettings)):
        spec = compose["services"][name]
        drain = float(spec.get("environment", {}).get("DRAIN_GRACE_S") or settings.model_fields["drain_grace_s"].default)
        grace = re.fullmatch(r"(\d+)s", spec["stop_grace_period"])
        assert grace, spec["stop_grace_period"]
        assert int(grace.group(1)) >= drain + 20, name


def test_nats_keeps_jetstream_and_postgresql_its_data_in_volumes(compose: dict[str, Any]) -> None:
    nats = compose["services"]["nats"]
    assert "--jetstream" in nats["command"]
    store = nats["command"][nats["command"].index("--store_dir") + 1]
    assert f"nats-data:{store}" in nats["volumes"]
    assert "postgres-data:/var/lib/postgresql/data" in compose["services"]["postgres"]["volumes"]
    assert {"nats-data", "postgres-data"} <= set(compose["volumes"])


def test_only_caddy_is_published_and_it_proxies_to_the_two_http_services(compose: dict[str, Any], services: tuple[Service, ...]) -> None:
    """Caddy alone faces the world; Prometheus and Grafana are published on the machine's loopback
    only (an SSH tunnel reaches them); nothing else is published at all."""
    published = {name: spec["ports"] for name, spec in compose["services"].items() if spec.get("ports")}
    assert set(published) == {"caddy", "prometheus", "grafana"}
    assert published["prometheus"] == ["127.0.0.1:9090:9090"]
    assert published["grafana"] == ["127.0.0.1:3000:3000"]
    assert all(not str(p).startswith("127.0.0.1:") for p in published["caddy"])
    caddy = compose["services"]["caddy"]
    assert "./Caddyfile:/etc/caddy/Caddyfile:ro" in caddy["volumes"]
    ports = {s.name: s.health_port for s in services}
    assert caddy["environment"]["GATEWAY_UPSTREAM"] == f"media-gateway:{ports['media-gateway']}"
    assert caddy["environment"]["ADMIN_UPSTREAM"] == f"admin-api:{ports['admin-api']}"


def test_the_admin_api_believes_forwarded_headers_from_the_compose_network_only(compose: dict[str, Any]) -> None:
    subnet = compose["networks"]["dialtone"]["ipam"]["config"][0]["subnet"]
    assert compose["services"]["admin-api"]["environment"]["FORWARDED_ALLOW_IPS"] == subnet


def _mounts(spec: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """A service's volumes as {target: (source, read-only)}, short syntax."""
    mounts = {}
    for volume in spec.get("volumes", []):
        source, target, *mode = volume.split(":")
        mounts[target] = (source, mode == ["ro"])
    return mounts


def test_every_container_has_a_read_only_root_and_somewhere_to_write(compose: dict[str, Any], services: tuple[Service, ...]) -> None:
    """Every container, third-party ones included: a read-only root filesystem, and each place it
    writes is a writable volume or a tmpfs. A service added to compose must say where it writes."""
    writes = {**WRITES, **{s.name: ["/tmp"] for s in services}}
    for name in ("transcript-writer", "admin-api"):  # the recordings, one volume for both
        writes[name] = [*writes[name], RECORDINGS]
    assert set(compose["services"]) == set(writes)
    for name, spec in compose["services"].items():
        assert spec["read_only"] is True, name
        tmpfs = {t.split(":")[0] for t in spec.get("tmpfs", [])}
        volumes = {target for target, (_, ro) in _mounts(spec).items() if not ro}
        for path in writes[name]:
            assert path in tmpfs | volumes, f"{name} writes to {path}: no volume or tmpfs there"
        for source, _ in _mounts(spec).values():
            if not source.startswith("."):  # a named volume, declared
                assert source in compose["volumes"], (name, source)


def test_the_writer_and_the_admin_api_share_the_recordings(compose: dict[str, Any]) -> None:
    """The writer records into RECORDINGS_DIR, the admin API serves from it: the same volume, at the
    directory the images name (their ENV), or the admin API would answer 404 for every recording."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert dockerfile.count(f"ENV RECORDINGS_DIR={RECORDINGS}") == 2
    sources = {_mounts(compose["services"][name])[RECORDINGS][0] for name in ("transcript-writer", "admin-api")}
    assert sources == {"recordings"}


def test_third_party_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, spec in compose["services"].items():
        if "build" in spec:
            continue
        image, _, tag = spec["image"].rpartition(":")
        assert image and tag and tag != "latest", (name, spec["image"])
    for name in ("prometheus", "grafana"):  # official images, exact releases
        assert re.fullmatch(r"(prom/prometheus|grafana/grafana):v?\d+\.\d+\.\d+", compose["services"][name]["image"])


def test_prometheus_and_grafana_are_locked_down(compose: dict[str, Any]) -> None:
    for name in ("prometheus", "grafana"):
        spec = compose["services"][name]
        assert spec["cap_drop"] == ["ALL"] and "cap_add" not in spec, name
        assert "no-new-privileges:true" in spec["security_opt"], name
        assert "user" not in spec, name  # the images' own unprivileged users (nobody, 472)
        assert spec["networks"] == ["dialtone"], name


def _flag(command: list[str], name: str) -> str:
    (value,) = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"--{name}=")]
    return value


def test_prometheus_loads_the_repositorys_scrape_config_and_alert_rules(compose: dict[str, Any]) -> None:
    spec = compose["services"]["prometheus"]
    mounts = _mounts(spec)
    config_path = _flag(spec["command"], "config.file")
    source, read_only = mounts[config_path]
    assert read_only and (DEPLOY / source).resolve() == DEPLOY / "prometheus" / "prometheus.yml"
    config = yaml.safe_load((DEPLOY / source).read_text())
    for rule_file in config["rule_files"]:  # relative to the configuration file, in the container
        target = str(Path(config_path).parent / rule_file)
        rules_source, rules_ro = mounts[target]
        assert rules_ro and (DEPLOY / rules_source).resolve() == (DEPLOY / source).parent.resolve() / rule_file
    storage = _flag(spec["command"], "storage.tsdb.path")
    assert storage in mounts and not mounts[storage][1] and mounts[storage][0] in compose["volumes"]
    assert "--web.enable-lifecycle" not in spec["command"] and "--web.enable-admin-api" not in spec["command"]
    check = " ".join(spec["healthcheck"]["test"])
    assert "http://127.0.0.1:9090/-/ready" in check


def _service_port(spec: dict[str, Any]) -> int:
    """The port a Dialtone container serves /metrics and /healthz on, from its health check."""
    (port,) = re.findall(r"http://127\.0\.0\.1:(\d+)/healthz", " ".join(spec["healthcheck"]["test"]))
    return int(port)


def test_prometheus_scrapes_exactly_the_services_compose_runs(compose: dict[str, Any], services: tuple[Service, ...]) -> None:
    """One job per service built from deploy/Dockerfile, looking it up by its compose name on the
    port its container serves /metrics on (the one its health check asks): a service added,
    renamed or moved to another port in compose.yaml without the scrape configuration fails here."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    scraped = {}
    for job in config["scrape_configs"]:
        (sd,) = job["dns_sd_configs"]
        assert job.keys() == {"job_name", "dns_sd_configs"}, job["job_name"]  # /metrics over http, the default
        assert sd["type"] == "A"
        (host,) = sd["names"]
        scraped[job["job_name"]] = (host, sd["port"])
    ours = {name: spec for name, spec in compose["services"].items() if "build" in spec}
    assert scraped == {name: (name, _service_port(spec)) for name, spec in ours.items()}
    assert set(ours) == {s.name for s in services}
    for service in services:
        assert _service_port(ours[service.name]) == service.health_port, service.name
        assert "dialtone" in ours[service.name]["networks"]


def test_grafana_is_provisioned_from_the_repository(compose: dict[str, Any]) -> None:
    """Grafana's datasource and dashboard provider come from deploy/grafana/provisioning, the
    dashboards from deploy/grafana/dashboards, mounted read-only where the provider reads them;
    the datasource is the compose Prometheus; its home page is the Dialtone dashboard."""
    spec = compose["services"]["grafana"]
    mounts = _mounts(spec)
    for kind in ("datasources", "dashboards"):
        source, read_only = mounts[f"/etc/grafana/provisioning/{kind}"]
        assert read_only and (DEPLOY / source).resolve() == DEPLOY / "grafana" / "provisioning" / kind
        assert list((DEPLOY / source).glob("*.yml")), kind
    (provider,) = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "dialtone.yml").read_text())["providers"]
    source, read_only = mounts[provider["options"]["path"]]
    assert read_only and (DEPLOY / source).resolve() == DEPLOY / "grafana" / "dashboards"
    home = spec["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent == Path(provider["options"]["path"])
    assert (DEPLOY / source / Path(home).name).is_file()
    data, data_ro = mounts["/var/lib/grafana"]
    assert not data_ro and data in compose["volumes"]
    (datasource,) = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    prometheus = compose["services"]["prometheus"]
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    assert prometheus["ports"][0].rsplit(":", 1)[1] == "9090" and "dialtone" in prometheus["networks"]
    assert spec["depends_on"]["prometheus"] == {"condition": "service_healthy"}
    assert "http://127.0.0.1:3000/api/health" in " ".join(spec["healthcheck"]["test"])


def test_grafana_has_no_default_password_nor_anonymous_access(compose: dict[str, Any]) -> None:
    """The admin password comes from deploy/.env and compose refuses to start without one; the
    example file holds a placeholder, never a usable secret. No anonymous viewers, no sign-up."""
    environment = compose["services"]["grafana"]["environment"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", environment["GF_SECURITY_ADMIN_PASSWORD"])
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert environment["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert environment["GF_USERS_ALLOW_ORG_CREATE"] == "false"
    assert "env_file" not in compose["services"]["grafana"]  # the services' secrets are not Grafana's business
    example = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert "change-me" in example["GRAFANA_ADMIN_PASSWORD"]


def test_nats_asks_every_service_for_its_own_user(compose: dict[str, Any], services: tuple[Service, ...]) -> None:
    """The NATS server loads the repository's users and permissions (deploy/nats/nats.conf) and
    reads their passwords from deploy/.env; each service connects as its own user with its own
    password, never a literal one."""
    from dialtone_common.nats_auth import DEPLOYED_USERS

    nats = compose["services"]["nats"]
    conf = nats["command"][nats["command"].index("--config") + 1]
    assert f"./nats/nats.conf:{conf}:ro" in nats["volumes"]
    assert set(nats["environment"]) == {u.password_env for u in DEPLOYED_USERS}
    users_by_service = {u.service: u for u in DEPLOYED_USERS}
    for name, value in nats["environment"].items():
        assert value.startswith(f"${{{name}:?"), name  # compose refuses to start without it
    users = set()
    for service in services:
        environment = compose["services"][service.name]["environment"]
        user = users_by_service[service.name]
        assert environment["NATS_USER"] == user.name, service.name
        assert environment["NATS_PASSWORD"].startswith(f"${{{user.password_env}:?"), service.name
        users.add(environment["NATS_USER"])
    assert len(users) == len(services)  # nobody shares a user
