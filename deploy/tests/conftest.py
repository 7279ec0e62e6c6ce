"""What the deployment files are checked against: the five services and the Tests page's worker as
the code defines them (package, settings class, the port serving ``/healthz``) and the environment
names each reads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from dialtone_admin.settings import AdminSettings
from dialtone_bridge.settings import BridgeSettings
from dialtone_common.settings import ServiceSettings
from dialtone_dev.settings import EvalWorkerSettings
from dialtone_gateway.settings import GatewaySettings
from dialtone_sim.summary import section
from dialtone_tools.settings import ToolSettings
from dialtone_writer.settings import WriterSettings
from pydantic import AliasChoices

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def env_names(settings: type[ServiceSettings]) -> dict[str, tuple[str, ...]]:
    """Each field of a settings class with the environment names that set it (upper case),
    aliases included: ``port`` of the gateway is ``GATEWAY_PORT`` or ``PORT``."""
    names: dict[str, tuple[str, ...]] = {}
    for field, info in settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            choices = tuple(str(c).upper() for c in alias.choices)
        elif isinstance(alias, str):
            choices = (alias.upper(),)
        else:
            choices = (field.upper(),)
        names[field] = choices
    return names


@dataclass(frozen=True)
class Service:
    name: str  # the deployment name: compose service, image target, Kubernetes Deployment
    package: str  # python -m <package>
    settings: type[ServiceSettings]
    command: tuple[str, ...] = ()  # what its image runs (default: python -m <package>)
    distribution: str = ""  # the workspace package its image installs (default: dialtone-<name>)

    @property
    def project(self) -> str:
        return self.distribution or f"dialtone-{self.name}"

    @property
    def argv(self) -> list[str]:
        return list(self.command or ("python", "-m", self.package))

    @property
    def health_port(self) -> int:
        """The port of /healthz: the HTTP services' own port, else the metrics port."""
        fields = self.settings.model_fields
        return int((fields["port"] if "port" in fields else fields["metrics_port"]).default)

    @property
    def env(self) -> dict[str, tuple[str, ...]]:
        return env_names(self.settings)


SERVICES = (
    Service("media-gateway", "dialtone_gateway", GatewaySettings),
    Service("realtime-bridge", "dialtone_bridge", BridgeSettings),
    Service("tool-runner", "dialtone_tools", ToolSettings),
    Service("transcript-writer", "dialtone_writer", WriterSettings),
    Service("admin-api", "dialtone_admin", AdminSettings),
    # The Tests page's worker: deployed beside the five, from the dev package (dialtone eval-worker).
    Service("eval-worker", "dialtone_dev.eval_service", EvalWorkerSettings, ("dialtone", "eval-worker"),
            "dialtone-dev"),
)


def _services_on_disk() -> set[str]:
    return {p.parent.name for p in (ROOT / "services").glob("*/pyproject.toml")}


@pytest.fixture(scope="session")
def services() -> tuple[Service, ...]:
    """The five services and the test worker; a sixth service on disk without an entry here fails
    every deployment test."""
    assert {s.name for s in SERVICES if not s.command} == _services_on_disk()
    return SERVICES


# ---- lines for the end of the run's output ----------------------------------------------------
@pytest.fixture
def deploy_report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Adds a line to the "deploy" section at the end of the run's output (shown with or without
    ``-s``, so ``make test`` prints it; see :mod:`dialtone_sim.summary`): where a test left an
    artifact, say."""
    return section(request.config, "deploy").append
