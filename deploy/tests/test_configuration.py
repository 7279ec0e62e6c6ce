"""Every setting a service reads is documented where an operator looks for it: deploy/.env.example
(which compose passes to every container) and the README's configuration table."""

from __future__ import annotations

import os
import re
from secrets import token_hex
from typing import Any, get_args

import pytest
import yaml
from dialtone_admin.settings import AdminSettings
from dialtone_dev.settings import EvalWorkerSettings
from pydantic import SecretStr, ValidationError

from .conftest import DEPLOY, ROOT, Service

pytestmark = pytest.mark.unit

ENV_EXAMPLE = DEPLOY / ".env.example"
LINE = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


def _example(include_commented: bool) -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = LINE.match(line)
        if match and (include_commented or not match[1]):
            values[match[2]] = match[3]
    return values


def _readme_settings() -> set[str]:
    """Names in the first column of the table under README's "## Configuration"."""
    section = ROOT.joinpath("README.md").read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", row.split("|")[1])}


def _undocumented(services: tuple[Service, ...], documented: set[str]) -> list[str]:
    return sorted(f"{service.name}: {'/'.join(names)}" for service in services
                  for names in service.env.values() if not documented & set(names))


def test_every_setting_is_in_the_env_example(services: tuple[Service, ...]) -> None:
    assert _undocumented(services, set(_example(include_commented=True))) == []


def test_every_setting_is_in_the_readme_table(services: tuple[Service, ...]) -> None:
    assert _undocumented(services, _readme_settings()) == []


def test_the_env_example_holds_placeholders_not_secrets(services: tuple[Service, ...]) -> None:
    def secret(service: Service, field: str) -> bool:
        annotation = service.settings.model_fields[field].annotation
        return annotation is SecretStr or SecretStr in get_args(annotation)

    secrets = {name for s in services for field, names in s.env.items() if secret(s, field) for name in names}
    active = _example(include_commented=False)
    assert {"TWILIO_AUTH_TOKEN", "OPENAI_API_KEY", "ADMIN_TOKEN"} <= secrets
    for name in sorted(secrets & set(active)) + ["POSTGRES_PASSWORD"]:
        assert "change-me" in active[name], name


def test_the_admin_api_refuses_the_env_examples_placeholder_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator who copies the file and forgets the admin token gets a refusal that says how to
    make one, never a dashboard guarded by a published word."""
    for name in list(os.environ):
        monkeypatch.delenv(name)
    for name, value in _example(include_commented=False).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=r"ADMIN_TOKEN is a placeholder.*token_urlsafe"):
        AdminSettings()


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} against the .env file."""
    def one(match: re.Match[str]) -> str:
        name, op, arg = match[1], match[2], match[3]
        if env.get(name):
            return env[name]
        assert op != ":?", f"compose would refuse to start: {arg}"
        return arg or ""
    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)(?:(:-|:\?)([^}]*))?\}", one, value)


@pytest.mark.parametrize("include_commented", [False, True], ids=["as-shipped", "every-line-uncommented"])
def test_a_copy_of_the_env_example_configures_every_service(
    services: tuple[Service, ...], monkeypatch: pytest.MonkeyPatch, include_commented: bool
) -> None:
    """What compose gives each container (.env plus the service's `environment`) passes the
    service's own settings validation once its placeholders are replaced as it says, as shipped and
    with every example value switched on."""
    compose: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    dotenv = {k: (token_hex(24) if "change-me" in v else v) for k, v in _example(include_commented).items() if v != ""}
    for service in services:
        environment = {**dotenv, **{k: _interpolate(str(v), dotenv)
                                    for k, v in compose["services"][service.name]["environment"].items()}}
        for name in list(os.environ):
            monkeypatch.delenv(name)
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        settings = service.settings()
        assert settings.nats_servers() == ["nats://nats:4222"], service.name
        if "public_base_url" in service.settings.model_fields:
            assert settings.model_dump()["public_base_url"] == "https://" + dotenv["DIALTONE_HOST"]
        if isinstance(settings, EvalWorkerSettings):  # the test worker refuses to start without these
            assert settings.missing() == [], settings.missing()
