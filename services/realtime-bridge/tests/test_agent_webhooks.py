"""An agent's ``[[webhooks]]``: the bridge loads the agent and checks the table's shape (the
transcript-writer sends them); a secret written in the file is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from dialtone_bridge.agents import AgentError, load_agent

pytestmark = pytest.mark.unit


def _agent(tmp_path: Path, toml: str) -> Path:
    folder = tmp_path / "crm-agent"
    folder.mkdir()
    (folder / "agent.toml").write_text(toml)
    (folder / "system.md").write_text("You help.")
    return folder


def test_an_agent_with_webhooks_loads(tmp_path: Path) -> None:
    agent = load_agent(_agent(tmp_path, '''
[[webhooks]]
name = "crm"
url = "https://crm.example.com/hooks"
secret_env = "CRM_WEBHOOK_SECRET"
events = ["call.ended"]
'''))
    assert agent.name == "crm-agent"


@pytest.mark.parametrize(("toml", "error"), [
    ('[[webhooks]]\nurl = "https://crm.example.com/h"\nsecret = "whsec_abc"\n', "no secret in agent.toml"),
    ('[[webhooks]]\nurl = "https://crm.example.com/h"\n', "secret_env"),
    ('[[webhooks]]\nurl = "ftp://crm.example.com/h"\nsecret_env = "X"\n', "http"),
    ('[[webhooks]]\nurl = "https://crm.example.com/h"\nsecret_env = "X"\nevents = ["call.lost"]\n', "unknown events"),
])  # fmt: skip
def test_a_wrong_webhook_stops_the_agent_loading(tmp_path: Path, toml: str, error: str) -> None:
    with pytest.raises(AgentError, match=error):
        load_agent(_agent(tmp_path, toml))
