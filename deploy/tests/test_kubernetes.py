"""deploy/k8s: the kustomize base and its production overlay. No cluster and no kustomize binary
here: the overlay is rendered by the small subset of kustomize it uses (checked below), and every
object is validated against the Kubernetes API schema (strict), prometheus-operator's objects
against their CRDs' schemas (deploy/tests/schemas/), then read for what an operator relies on:
probes, limits, an unprivileged locked-down container, room to drain, autoscalers, and Prometheus
scraping every pod with the labels the autoscaler's adapter needs."""

from __future__ import annotations

import copy
import importlib.util
import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from dialtone_bridge import metrics as bridge_metrics
from dialtone_bridge.settings import BridgeSettings
from dialtone_gateway.settings import GatewaySettings
from dialtone_tools.settings import ToolSettings
from prometheus_client.metrics import MetricWrapperBase

from .conftest import DEPLOY, Service

pytestmark = pytest.mark.unit

K8S = DEPLOY / "k8s"
DRAIN_MARGIN_S = 20  # after the drain: a hand-off or Twilio's goodbye, then the exit
KUBERNETES_VERSION = "1.37.0"  # the current release (August 2026); kubernetes-validate carries its schema
SUPPORTED = {"apiVersion", "kind", "namespace", "resources", "components", "images", "replicas", "configMapGenerator"}
OVERLAYS = {"base": K8S / "base", "production": K8S / "overlays" / "production"}
MONITORING = K8S / "monitoring"
OPERATOR_GROUP = "monitoring.coreos.com"
SCHEMAS = Path(__file__).with_name("schemas")
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


def render(directory: Path) -> list[dict[str, Any]]:
    """`kustomize build` for the features these kustomizations use (and only those: any other
    field fails the test rather than being ignored)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(kustomization) <= SUPPORTED, f"{directory}: render() does not know {set(kustomization) - SUPPORTED}"
    objects: list[dict[str, Any]] = []
    for component in kustomization.get("components", []):  # a Component: its resources, then ours transform them
        assert yaml.safe_load((directory / component / "kustomization.yaml").read_text())["kind"] == "Component"
    for resource in kustomization.get("resources", []) + kustomization.get("components", []):
        path = directory / resource
        if path.is_dir():
            objects += render(path)
        else:
            objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for generator in kustomization.get("configMapGenerator", []):
        assert generator.get("options", {}).get("disableNameSuffixHash", True) or generator.get("behavior") == "merge"
        data = dict(literal.split("=", 1) for literal in generator["literals"])
        existing = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == generator["name"]]
        if generator.get("behavior") == "merge":
            assert len(existing) == 1, generator["name"]
            existing[0]["data"].update(data)
        else:
            assert not existing, generator["name"]
            objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data})
    objects = copy.deepcopy(objects)
    for obj in objects:
        if "namespace" in kustomization and obj["kind"] != "Namespace":
            obj["metadata"]["namespace"] = kustomization["namespace"]
        if obj["kind"] == "Deployment":
            for rule in kustomization.get("replicas", []):
                if rule["name"] == obj["metadata"]["name"]:
                    obj["spec"]["replicas"] = rule["count"]
            for container in obj["spec"]["template"]["spec"]["containers"]:
                for image in kustomization.get("images", []):
                    if container["image"].split(":")[0] == image["name"]:
                        container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    return objects


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


@pytest.fixture(scope="module", params=list(OVERLAYS), ids=list(OVERLAYS))
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(OVERLAYS[request.param])


@pytest.fixture(scope="module")
def production() -> list[dict[str, Any]]:
    return render(OVERLAYS["production"])


def _strict(schema: Any) -> Any:
    """A CRD's schema as kubectl's strict field validation applies it: an unknown field is an error
    (the API server would otherwise prune it silently), except where the CRD keeps unknown fields."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (v if k == "properties" else _strict(v)) for k, v in schema.items()}
    if "properties" in schema:
        out["properties"] = {name: _strict(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


def validate_operator_object(obj: dict[str, Any]) -> None:
    """A prometheus-operator object against its CRD's schema (v0.93.0, vendored in schemas/)."""
    assert obj["apiVersion"] == f"{OPERATOR_GROUP}/v1", obj["apiVersion"]
    schema = json.loads((SCHEMAS / f"{OPERATOR_GROUP}_v1_{obj['kind'].lower()}.json").read_text())
    # OpenAPI v3 schemas; their patterns are Go regular expressions, so no metaschema check
    jsonschema.Draft7Validator(_strict(schema)).validate(obj)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"])


def test_every_object_is_valid_for_a_current_kubernetes(rendered: list[dict[str, Any]]) -> None:
    assert rendered
    for obj in rendered:
        if obj["apiVersion"].startswith(f"{OPERATOR_GROUP}/"):
            validate_operator_object(obj)
        else:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_validation_refuses_a_misplaced_field(production: list[dict[str, Any]]) -> None:
    """The check above is strict: a field where Kubernetes does not read it fails, where the API
    server would silently drop it (a probe on the pod instead of the container, say)."""
    deployment = copy.deepcopy(find(production, "Deployment", "realtime-bridge"))
    deployment["spec"]["template"]["spec"]["readinessProbe"] = {"httpGet": {"path": "/healthz", "port": 9101}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_validation_refuses_a_misspelt_field_of_a_monitoring_object(production: list[dict[str, Any]]) -> None:
    """The CRD schemas are applied strictly too: a misspelt field fails here rather than being
    pruned by the API server (a PodMonitor scraping nothing, silently)."""
    monitor = copy.deepcopy(find(production, "PodMonitor", "dialtone"))
    monitor["spec"]["podMetricEndpoints"] = monitor["spec"].pop("podMetricsEndpoints")
    with pytest.raises(jsonschema.ValidationError):
        validate_operator_object(monitor)
    rule = copy.deepcopy(find(production, "PrometheusRule", "dialtone"))
    rule["spec"]["groups"][0]["rules"][0]["expresion"] = rule["spec"]["groups"][0]["rules"][0].pop("expr")
    with pytest.raises(jsonschema.ValidationError):
        validate_operator_object(rule)


@pytest.mark.parametrize("directory", [K8S / "base", MONITORING], ids=["base", "monitoring"])
def test_every_manifest_in_a_kustomization_is_part_of_it(directory: Path) -> None:
    listed = set(yaml.safe_load((directory / "kustomization.yaml").read_text())["resources"])
    assert {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"} == listed


def test_each_service_has_a_deployment_service_account_and_disruption_budget(
    rendered: list[dict[str, Any]], services: tuple[Service, ...]
) -> None:
    for service in services:
        deployment = find(rendered, "Deployment", service.name)
        pod = deployment["spec"]["template"]
        labels = pod["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        account = find(rendered, "ServiceAccount", service.name)
        assert pod["spec"]["serviceAccountName"] == account["metadata"]["name"]
        assert pod["spec"]["automountServiceAccountToken"] is False  # no service talks to the API server
        svc = find(rendered, "Service", service.name)
        assert svc["spec"]["selector"].items() <= labels.items()
        (container,) = pod["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert [ports[p["targetPort"]] for p in svc["spec"]["ports"]] == [service.health_port]
        budget = find(rendered, "PodDisruptionBudget", service.name)
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_every_container_is_probed_limited_and_unprivileged(
    rendered: list[dict[str, Any]], services: tuple[Service, ...]
) -> None:
    for service in services:
        pod = find(rendered, "Deployment", service.name)["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        # Readiness follows NATS, PostgreSQL and a drain; liveness only whether the process answers:
        # restarting a pod while its database is away, or while it drains its calls, helps nobody.
        for probe, path in (("readinessProbe", "/healthz"), ("livenessProbe", "/livez")):
            get = container[probe]["httpGet"]
            assert (get["path"], ports.get(get["port"], get["port"])) == (path, service.health_port), (service.name, probe)
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), (service.name, kind)
        context = container["securityContext"]
        assert context.get("runAsNonRoot", pod["securityContext"].get("runAsNonRoot")) is True, service.name
        assert pod["securityContext"]["runAsUser"] != 0
        assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"] and "add" not in context["capabilities"]
        tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
        assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])


def _pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"]) for o in objects if o["kind"] in WORKLOADS]


def test_every_container_has_a_read_only_root_and_writes_only_to_its_volumes(rendered: list[dict[str, Any]]) -> None:
    """Every container of every workload, init containers included (a sidecar added later too):
    read-only root filesystem, and each writable mount an emptyDir or a claim, never the node."""
    pods = _pod_specs(rendered)
    assert len(pods) == 6
    for name, pod in pods:
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod.get("initContainers", []) + pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, (name, container["name"])
            for mount in container.get("volumeMounts", []):
                volume = volumes[mount["name"]]
                assert mount.get("readOnly") or {"emptyDir", "persistentVolumeClaim", "ephemeral"} & set(volume), (name, mount)
                assert "hostPath" not in volume, (name, mount)


def test_nats_runs_with_a_read_only_root_too() -> None:
    """NATS comes from its Helm chart (no chart rendering here): the values make its server and
    config reloader read-only, and leave out nats-box, whose shell writes into its root."""
    values = yaml.safe_load((K8S / "nats" / "values.yaml").read_text())
    for part in ("container", "reloader"):
        context = values[part]["merge"]["securityContext"]
        assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False, part
    assert values["natsBox"]["enabled"] is False
    assert values["config"]["jetstream"]["fileStore"]["pvc"]["enabled"]  # its only data: on a volume


def test_containers_set_only_settings_their_service_reads(
    rendered: list[dict[str, Any]], services: tuple[Service, ...]
) -> None:
    """A misspelt variable is ignored by pydantic-settings; here it fails."""
    config = find(rendered, "ConfigMap", "dialtone-config")["data"]
    read_by_any = {n for s in services for names in s.env.values() for n in names}
    assert set(config) <= read_by_any, set(config) - read_by_any
    for service in services:
        (container,) = find(rendered, "Deployment", service.name)["spec"]["template"]["spec"]["containers"]
        names = {e["name"] for e in container["env"]}
        assert names <= {n for ns in service.env.values() for n in ns}, (service.name, names)
        if "host" in service.env:
            assert any(e["name"] in service.env["host"] and e["value"] == "0.0.0.0" for e in container["env"])
    assert config["METRICS_HOST"] == "0.0.0.0"


def test_recordings_are_kept_where_every_admin_api_can_serve_them(rendered: list[dict[str, Any]]) -> None:
    """Pods share no disk: the writers record into the S3 bucket and the admin APIs read it, both
    with the same credentials; the recordings directory (the writer's spool) is writable."""
    config = find(rendered, "ConfigMap", "dialtone-config")["data"]
    assert config["RECORDINGS_S3_BUCKET"]
    for name in ("transcript-writer", "admin-api"):
        pod = find(rendered, "Deployment", name)["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
        for var, key in (("RECORDINGS_S3_ACCESS_KEY_ID", "access-key-id"),
                         ("RECORDINGS_S3_SECRET_ACCESS_KEY", "secret-access-key")):
            assert secrets[var] == {"name": "dialtone-recordings-s3", "key": key, "optional": True}, (name, var)
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/var/lib/dialtone/recordings")
        assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == mount["name"]), name


def test_gateways_and_bridges_have_time_to_finish_their_calls(rendered: list[dict[str, Any]]) -> None:
    """Kubernetes kills a pod at the end of its grace: the drain (DRAIN_GRACE_S, as the pod sets it
    or by default) and what follows it (hand-off or goodbye, exit) must fit well inside."""
    for name, settings in (("media-gateway", GatewaySettings), ("realtime-bridge", BridgeSettings)):
        pod = find(rendered, "Deployment", name)["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for c in pod["containers"] for e in c.get("env", [])}
        drain = float(env.get("DRAIN_GRACE_S") or settings.model_fields["drain_grace_s"].default)
        assert pod["terminationGracePeriodSeconds"] >= drain + DRAIN_MARGIN_S, name
    runner = find(rendered, "Deployment", "tool-runner")["spec"]["template"]["spec"]
    assert runner["terminationGracePeriodSeconds"] > ToolSettings.model_fields["drain_timeout_s"].default


def test_the_tool_runner_scales_on_cpu_and_the_bridge_on_active_calls(rendered: list[dict[str, Any]]) -> None:
    runner = find(rendered, "HorizontalPodAutoscaler", "tool-runner")
    assert runner["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tool-runner"}
    assert [m["resource"]["name"] for m in runner["spec"]["metrics"] if m["type"] == "Resource"] == ["cpu"]

    bridge = find(rendered, "HorizontalPodAutoscaler", "realtime-bridge")
    assert bridge["spec"]["scaleTargetRef"]["name"] == "realtime-bridge"
    (metric,) = bridge["spec"]["metrics"]
    assert (metric["type"], metric["pods"]["metric"]["name"]) == ("Pods", "dialtone_bridge_calls_active")
    # scaling starts well before a bridge is full and refuses calls
    assert int(metric["pods"]["target"]["averageValue"]) <= BridgeSettings.model_fields["max_calls"].default // 2
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    assert "dialtone_bridge_calls_active" in {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    # an autoscaler on a metric the bridge does not export would never scale
    assert "dialtone_bridge_calls_active" in {family.name for family in bridge_metrics.REGISTRY.collect()}

    for hpa in (runner, bridge):  # a replica count in the Deployment would fight the autoscaler on every apply
        assert "replicas" not in find(rendered, "Deployment", hpa["spec"]["scaleTargetRef"]["name"])["spec"]


def test_production_keeps_events_on_every_node_of_the_nats_cluster(production: list[dict[str, Any]]) -> None:
    nats = yaml.safe_load((K8S / "nats" / "values.yaml").read_text())["config"]
    assert nats["jetstream"]["enabled"] and nats["jetstream"]["fileStore"]["pvc"]["enabled"]
    config = find(production, "ConfigMap", "dialtone-config")["data"]
    assert config["JETSTREAM_REPLICAS"] == str(nats["cluster"]["replicas"]) == "3"
    assert config["NATS_URL"] == "nats://nats:4222"  # the chart's Service for the release "nats"
    base = find(render(OVERLAYS["base"]), "ConfigMap", "dialtone-config")["data"]
    assert base["JETSTREAM_REPLICAS"] == "1"


def test_production_runs_pinned_images_from_its_registry(production: list[dict[str, Any]], services: tuple[Service, ...]) -> None:
    for service in services:
        (container,) = find(production, "Deployment", service.name)["spec"]["template"]["spec"]["containers"]
        name, tag = container["image"].rsplit(":", 1)
        assert name.endswith(f"/dialtone/{service.name}") and tag != "latest", container["image"]
    assert all(o["metadata"].get("namespace") == "dialtone" for o in production if o["kind"] != "Namespace")


# ---- Prometheus on Kubernetes: prometheus-operator objects (deploy/k8s/monitoring) ---------------
def _monitoring_generator():
    spec = importlib.util.spec_from_file_location("dialtone_k8s_monitoring_generate", MONITORING / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_production_includes_the_monitoring_component(production: list[dict[str, Any]]) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in production if o["apiVersion"].startswith(f"{OPERATOR_GROUP}/")}
    assert kinds == {("PodMonitor", "dialtone"), ("PrometheusRule", "dialtone")}
    base = render(OVERLAYS["base"])  # the base applies on a cluster without the operator's CRDs
    assert not [o for o in base if o["apiVersion"].startswith(f"{OPERATOR_GROUP}/")]
    for kind in ("PodMonitor", "PrometheusRule"):  # Prometheus selects both by the same release label
        assert find(production, kind, "dialtone")["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_prometheus_scrapes_every_pod_of_every_service_under_its_job_name(
    production: list[dict[str, Any]], services: tuple[Service, ...]
) -> None:
    """The PodMonitor selects each Deployment's pods (in their namespace), scrapes /metrics on a
    port name the container really exposes, the one its /metrics is served on, and names the job
    after the service, as the alert rules do; no endpoint is aimed at a port no pod has."""
    monitor = find(production, "PodMonitor", "dialtone")
    spec = monitor["spec"]
    assert "namespaceSelector" not in spec  # its own namespace: where the Deployments are
    selector = spec["selector"]["matchLabels"]
    endpoints = spec["podMetricsEndpoints"]
    used: set[str] = set()
    for service in services:
        deployment = find(production, "Deployment", service.name)
        assert deployment["metadata"]["namespace"] == monitor["metadata"]["namespace"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), service.name
        assert labels[spec["jobLabel"]] == service.name
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        matching = [e for e in endpoints if e["port"] in ports]
        assert len(matching) == 1, (service.name, [e["port"] for e in matching])
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        metrics_port = int(env.get("ADMIN_METRICS_PORT") or service.health_port)  # the admin API's is apart
        assert ports[matching[0]["port"]] == metrics_port, service.name
        assert matching[0]["path"] == "/metrics"
        used.add(matching[0]["port"])
    assert used == {e["port"] for e in endpoints}
    jobs = set(re.search(r'job=~"([^"]+)"', _alert("DialtoneServiceDown")["expr"])[1].split("|"))
    assert jobs == {s.name for s in services}


def _alert(name: str) -> dict[str, Any]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    return next(r for g in groups for r in g["rules"] if r.get("alert") == name)


def test_the_bridges_active_calls_reach_the_autoscaler_by_namespace_and_pod(production: list[dict[str, Any]]) -> None:
    """prometheus-adapter finds dialtone_bridge_calls_active by the labels namespace and pod, which
    the operator gives every PodMonitor target. Nothing may take them away: no relabeling writing
    or dropping them, no honorLabels letting a metric's own labels win, and no bridge metric with a
    label of those names (it would be renamed exported_pod, or override the target's)."""
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    (rule,) = [r for r in adapter["rules"]["custom"] if r["name"]["as"] == "dialtone_bridge_calls_active"]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    assert rule["seriesQuery"].startswith("dialtone_bridge_calls_active{")
    target_labels = {"namespace", "pod", "job", "instance", "container", "endpoint"}
    monitor = find(production, "PodMonitor", "dialtone")
    assert not monitor["spec"].get("podTargetLabels")
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert not endpoint.get("honorLabels"), endpoint["port"]
        for relabel in endpoint.get("relabelings", []) + endpoint.get("metricRelabelings", []):
            assert relabel.get("targetLabel") not in target_labels, relabel
            assert relabel.get("action") not in ("labeldrop", "labelkeep", "labelmap"), relabel
    (family,) = [f for f in bridge_metrics.REGISTRY.collect() if f.name == "dialtone_bridge_calls_active"]
    assert family.type == "gauge"
    metrics = [m for m in vars(bridge_metrics).values() if isinstance(m, MetricWrapperBase)]
    assert metrics
    label_names = {name for m in metrics for name in m._labelnames}
    assert not label_names & target_labels, label_names & target_labels
    # the adapter asks the Prometheus prometheus-operator runs in the namespace "monitoring"
    assert adapter["prometheus"]["url"] == "http://prometheus-operated.monitoring.svc"


def test_the_prometheus_rule_is_alerts_yml(production: list[dict[str, Any]]) -> None:
    """The same alerts on Kubernetes as in compose: the PrometheusRule is generated from
    deploy/prometheus/alerts.yml (which promtool checks and tests) and must be regenerated with it."""
    generator = _monitoring_generator()
    assert (MONITORING / "prometheusrule.yaml").read_text() == generator.render(), (
        "deploy/k8s/monitoring/prometheusrule.yaml differs from deploy/prometheus/alerts.yml: "
        "run `uv run python deploy/k8s/monitoring/generate.py` and commit the result"
    )
    rule = find(production, "PrometheusRule", "dialtone")
    assert rule["spec"] == yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())


def test_every_service_connects_to_nats_as_its_own_user_from_the_secret(
    rendered: list[dict[str, Any]], services: tuple[Service, ...]
) -> None:
    from dialtone_common.nats_auth import DEPLOYED_USERS, K8S_SECRET, secret_key

    users = {u.service: u for u in DEPLOYED_USERS}
    for service in services:
        (container,) = find(rendered, "Deployment", service.name)["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        user = users[service.name]
        assert env["NATS_USER"]["value"] == user.name, service.name
        assert env["NATS_PASSWORD"]["valueFrom"] == {"secretKeyRef": {"name": K8S_SECRET, "key": secret_key(user)}}
    # No password, token or key is written into a manifest: secrets come from Secrets made outside.
    assert not [o for o in rendered if o["kind"] == "Secret"]
    for name, spec in _pod_specs(rendered):
        for container in spec["containers"]:
            for e in container.get("env", []):
                if any(word in e["name"] for word in ("PASSWORD", "TOKEN", "SECRET", "KEY")):
                    assert "value" not in e, (name, e["name"])


def test_the_nats_helm_values_hold_the_users_rendered_from_code() -> None:
    """config.merge.authorization and container.env of the Helm values are what
    dialtone_common.nats_auth renders: the permissions are written down once, in code."""
    from dialtone_common.nats_auth import helm_values

    values = yaml.safe_load((K8S / "nats" / "values.yaml").read_text())
    expected = helm_values()
    hint = "regenerate them: python -m dialtone_common.nats_auth --helm"
    assert values["config"]["merge"] == expected["config"]["merge"], hint
    assert values["container"]["env"] == expected["container"]["env"], hint


def test_behind_the_tls_ingress_the_admin_api_believes_only_it_and_publishes_only_its_web_port(
    rendered: list[dict[str, Any]],
) -> None:
    """The settings the TLS-proxy test (services/admin-api/tests/test_signins.py) runs the admin API
    with are the manifests': Secure cookies, forwarded headers believed from the pod network only
    (which the NetworkPolicy narrows to the ingress controller), /metrics on a port of its own that
    neither the Service nor the Ingress publishes; the Ingress ends TLS for every host it routes."""
    config = find(rendered, "ConfigMap", "dialtone-config")["data"]
    (container,) = find(rendered, "Deployment", "admin-api")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SECURE_COOKIES"] == "true"
    trusted = config["FORWARDED_ALLOW_IPS"]
    assert trusted not in ("*", "") and ipaddress.ip_network(trusted).is_private
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert str(ports["metrics"]) == env["ADMIN_METRICS_PORT"] and ports["web"] == int(env["ADMIN_PORT"])
    service = find(rendered, "Service", "admin-api")["spec"]["ports"]
    assert [p["targetPort"] for p in service] == ["web"]  # the metrics port is no Service's
    ingress = find(rendered, "Ingress", "dialtone")["spec"]
    hosts = {rule["host"] for rule in ingress["rules"]}
    assert hosts <= {h for tls in ingress["tls"] for h in tls["hosts"]}
    admin_routes = [p["backend"]["service"] for rule in ingress["rules"] for p in rule["http"]["paths"]
                    if p["backend"]["service"]["name"] == "admin-api"]
    assert admin_routes == [{"name": "admin-api", "port": {"name": "http"}}]
    policy = find(rendered, "NetworkPolicy", "admin-api")["spec"]
    web_from = [peer for rule in policy["ingress"] if {"port": "web", "protocol": "TCP"} in rule["ports"]
                for peer in rule["from"]]
    namespaces = [p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in web_from
                  if "namespaceSelector" in p]
    assert namespaces == ["ingress-nginx"]  # no other namespace reaches the port that believes X-Forwarded-*
