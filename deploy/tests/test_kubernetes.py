"""deploy/k8s: the kustomize base and its production overlay. No cluster and no kustomize binary
here: the overlay is rendered by the small subset of kustomize it uses (checked below), and every
object is validated against the Kubernetes API schema (strict), then read for what an operator
relies on: probes, limits, an unprivileged locked-down container, room to drain, autoscalers."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from dialtone_bridge import metrics as bridge_metrics
from dialtone_bridge.settings import BridgeSettings
from dialtone_tools.settings import ToolSettings

from .conftest import DEPLOY, Service

pytestmark = pytest.mark.unit

K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.37.0"  # the current release (August 2026); kubernetes-validate carries its schema
SUPPORTED = {"apiVersion", "kind", "namespace", "resources", "images", "replicas", "configMapGenerator"}
OVERLAYS = {"base": K8S / "base", "production": K8S / "overlays" / "production"}


def render(directory: Path) -> list[dict[str, Any]]:
    """`kustomize build` for the features these kustomizations use (and only those: any other
    field fails the test rather than being ignored)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(kustomization) <= SUPPORTED, f"{directory}: render() does not know {set(kustomization) - SUPPORTED}"
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
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


def test_every_object_is_valid_for_a_current_kubernetes(rendered: list[dict[str, Any]]) -> None:
    assert rendered
    for obj in rendered:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_validation_refuses_a_misplaced_field(production: list[dict[str, Any]]) -> None:
    """The check above is strict: a field where Kubernetes does not read it fails, where the API
    server would silently drop it (a probe on the pod instead of the container, say)."""
    deployment = copy.deepcopy(find(production, "Deployment", "realtime-bridge"))
    deployment["spec"]["template"]["spec"]["readinessProbe"] = {"httpGet": {"path": "/healthz", "port": 9101}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_every_manifest_in_the_base_is_part_of_it() -> None:
    listed = set(yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["resources"])
    assert {p.name for p in (K8S / "base").glob("*.yaml")} - {"kustomization.yaml"} == listed


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
        for probe in ("readinessProbe", "livenessProbe"):
            get = container[probe]["httpGet"]
            assert (get["path"], ports.get(get["port"], get["port"])) == ("/healthz", service.health_port), (service.name, probe)
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), (service.name, kind)
        context = container["securityContext"]
        assert context.get("runAsNonRoot", pod["securityContext"].get("runAsNonRoot")) is True, service.name
        assert pod["securityContext"]["runAsUser"] != 0
        assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"] and "add" not in context["capabilities"]
        tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
        assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])


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


def test_gateways_and_bridges_have_time_to_finish_their_calls(rendered: list[dict[str, Any]]) -> None:
    for name in ("media-gateway", "realtime-bridge"):
        pod = find(rendered, "Deployment", name)["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] >= 90, name
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
