"""``make run`` honours WEBHOOK_URL and WEBHOOK_SECRET: the platform hands them to the
transcript-writer (the deliverer), with the secrets the agents' [[webhooks]] name, and to no one else."""

from __future__ import annotations

from pathlib import Path

import pytest
from dialtone_dev.platform import Platform

pytestmark = pytest.mark.unit

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_the_writer_gets_the_webhook_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    agents = tmp_path / "agents"
    (agents / "sales").mkdir(parents=True)
    (agents / "sales" / "agent.toml").write_text(
        '[[webhooks]]\nurl = "https://crm.example.com/h"\nsecret_env = "SALES_CRM_SECRET"\n'
    )
    monkeypatch.setenv("SALES_CRM_SECRET", SECRET)
    monkeypatch.setenv("WEBHOOK_RETRY_FOR_S", "600")
    monkeypatch.setenv("UNRELATED_SECRET", "x")
    p = Platform(data_dir=tmp_path / "data", agents_dir=agents, webhook_url="https://hooks.example.com/in",
                 webhook_secret=SECRET)
    env = p.env("transcript-writer")
    assert env["WEBHOOK_URL"] == "https://hooks.example.com/in" and env["WEBHOOK_SECRET"] == SECRET
    assert env["SALES_CRM_SECRET"] == SECRET and env["WEBHOOK_RETRY_FOR_S"] == "600"
    assert env["AGENTS_DIR"] == str(agents) and "UNRELATED_SECRET" not in env
    for other in ("media-gateway", "realtime-bridge", "tool-runner", "admin-api"):
        assert "WEBHOOK_SECRET" not in p.env(other) and "SALES_CRM_SECRET" not in p.env(other)
