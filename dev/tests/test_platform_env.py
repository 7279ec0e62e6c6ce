"""`make run` honours every documented setting: each one found in its environment reaches every
service that reads it; a test's platform stays what the test says."""

from __future__ import annotations

from pathlib import Path

import pytest
from dialtone_dev.platform import MANAGED, SETTINGS, Platform, setting_names

pytestmark = pytest.mark.unit


def _platform(tmp_path: Path, *, from_environment: bool) -> Platform:
    return Platform(data_dir=tmp_path / "data", nats_url="nats://127.0.0.1:4222", database_url="postgresql://db",
                    settings_from_environment=from_environment)  # fmt: skip


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_every_setting_in_make_runs_environment_reaches_the_service(
    service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = sorted(setting_names(service) - MANAGED)
    assert names, service
    for name in names:
        monkeypatch.setenv(name, f"from-the-environment-{name}")
    env = _platform(tmp_path, from_environment=True).env(service)
    assert {n: env.get(n) for n in names} == {n: f"from-the-environment-{n}" for n in names}


def test_agents_dir_reaches_the_bridge_and_the_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTS_DIR", "/my/agents")
    monkeypatch.setenv("OPENAI_LIVE_URL", "wss://live.example/v1/live/sessions")
    platform = _platform(tmp_path, from_environment=True)
    assert platform.env("realtime-bridge")["AGENTS_DIR"] == "/my/agents"
    assert platform.env("transcript-writer")["AGENTS_DIR"] == "/my/agents"
    assert "AGENTS_DIR" not in platform.env("admin-api")  # it reads no agents
    if "OPENAI_LIVE_URL" in setting_names("realtime-bridge"):
        assert platform.env("realtime-bridge")["OPENAI_LIVE_URL"] == "wss://live.example/v1/live/sessions"


def test_the_platforms_own_servers_and_a_tests_platform_are_not_overridden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NATS_URL", "DATABASE_URL", "METRICS_PORT", "HOST", "AGENTS_DIR"):
        monkeypatch.setenv(name, "from-the-shell")
    made_run = _platform(tmp_path, from_environment=True)
    assert made_run.env("realtime-bridge")["NATS_URL"] == "nats://127.0.0.1:4222"
    assert made_run.env("admin-api").get("HOST") is None  # zsh's HOST is the machine's name
    test = _platform(tmp_path, from_environment=False)
    assert test.env("realtime-bridge")["AGENTS_DIR"] != "from-the-shell"
