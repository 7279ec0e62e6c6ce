"""Agent folders: loading, choosing who answers, turn detection per language, bad definitions."""

from __future__ import annotations

from pathlib import Path

import pytest
from dialtone_bridge.agents import Agent, AgentBook, AgentError, load_agent

pytestmark = pytest.mark.unit

AGENTS_DIR = Path(__file__).resolve().parents[3] / "agents"


def _agent_dir(root: Path, name: str, toml: str, system: str | None = "You are helpful.") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "agent.toml").write_text(toml)
    if system is not None:
        (folder / "system.md").write_text(system + "\n\n")
    return folder


@pytest.fixture
def book() -> AgentBook:
    return AgentBook.load(AGENTS_DIR)


def test_repo_agents_load(book: AgentBook) -> None:
    assert set(book.agents) == {"support", "billing"}
    support = book.agents["support"]
    assert support.instructions.startswith("# Role")
    assert support.greeting and "Acme" in support.greeting
    assert "lookup_customer" in support.tools
    assert support.handoffs == ("billing",)
    assert book.agents["billing"].handoffs == ("support",)
    assert book.default is support
    assert support.limits.max_duration_s == 1800


def test_the_dialled_number_chooses_the_agent(book: AgentBook) -> None:
    assert book.choose(name=None, to_number="+15005550007").name == "billing"
    assert book.choose(name=None, to_number="+15005550006").name == "support"


def test_a_named_agent_wins_over_the_number(book: AgentBook) -> None:
    assert book.choose(name="billing", to_number="+15005550006").name == "billing"
    assert book.choose(name="support", to_number="+15005550007").name == "support"


def test_the_default_agent_answers_other_numbers(book: AgentBook) -> None:
    assert book.choose(name=None, to_number="+19998887777").name == "support"
    assert book.choose(name=None, to_number=None).name == "support"


def test_an_unknown_agent_name_falls_back_to_the_number(book: AgentBook) -> None:
    assert book.choose(name="nobody", to_number="+15005550007").name == "billing"


def test_without_a_default_an_unknown_number_is_an_error(tmp_path: Path) -> None:
    _agent_dir(tmp_path, "a", 'numbers = ["+1001"]')
    _agent_dir(tmp_path, "b", 'numbers = ["+1002"]')
    book = AgentBook.load(tmp_path)

    assert book.choose(name=None, to_number="+1002").name == "b"
    with pytest.raises(AgentError):
        book.choose(name=None, to_number="+1003")


def test_a_single_agent_is_the_default(tmp_path: Path) -> None:
    _agent_dir(tmp_path, "solo", "")

    assert AgentBook.load(tmp_path).choose(name=None, to_number="+1").name == "solo"


@pytest.mark.parametrize(("language", "silence"), [("en", 500), ("es", 600), ("ja", 700), ("ja-JP", 700), ("en-GB", 500), ("xx", 500)])
def test_silence_duration_follows_the_language(tmp_path: Path, language: str, silence: int) -> None:
    agent = load_agent(_agent_dir(tmp_path, "a", f'language = "{language}"'))

    assert agent.silence_duration_ms == silence
    assert agent.turn_detection_config()["silence_duration_ms"] == silence


def test_an_explicit_silence_duration_wins(tmp_path: Path) -> None:
    folder = _agent_dir(tmp_path, "a", 'language = "ja"\n[turn_detection]\nsilence_duration_ms = 450\nthreshold = 0.7\n')
    config = load_agent(folder).turn_detection_config()

    assert config["silence_duration_ms"] == 450
    assert config["threshold"] == 0.7
    assert config["type"] == "server_vad"


def test_per_agent_language_table_overrides_the_builtin_one() -> None:
    agent = Agent(name="a", instructions="x", language="es", silence_by_language_ms={"es": 900})

    assert agent.silence_duration_ms == 900


def test_instructions_come_from_the_named_file(tmp_path: Path) -> None:
    folder = _agent_dir(tmp_path, "a", 'instructions_file = "prompt.md"', system=None)
    (folder / "prompt.md").write_text("  Be brief.  \n")

    assert load_agent(folder).instructions == "Be brief."


@pytest.mark.parametrize(
    "toml",
    [
        pytest.param('voise = "marin"', id="misspelt-voice"),
        pytest.param('name = "other"', id="name-is-the-folder"),
        pytest.param("[greetings]\nen = 'hi'", id="unknown-table"),
        pytest.param('language = "en', id="bad-toml"),
    ],
)
def test_bad_settings_give_agent_error(tmp_path: Path, toml: str) -> None:
    with pytest.raises(AgentError):
        load_agent(_agent_dir(tmp_path, "a", toml))


def test_an_unknown_limit_gives_agent_error(tmp_path: Path) -> None:
    with pytest.raises(AgentError):
        load_agent(_agent_dir(tmp_path, "a", "[limits]\nmax_duration_minutes = 30\n"))


def test_missing_instructions_give_agent_error(tmp_path: Path) -> None:
    with pytest.raises(AgentError):
        load_agent(_agent_dir(tmp_path, "a", "", system=None))


def test_two_default_agents_give_agent_error(tmp_path: Path) -> None:
    _agent_dir(tmp_path, "a", "default = true")
    _agent_dir(tmp_path, "b", "default = true")

    with pytest.raises(AgentError):
        AgentBook.load(tmp_path)


def test_an_empty_or_missing_agents_dir_gives_agent_error(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    with pytest.raises(AgentError):
        AgentBook.load(tmp_path)
    with pytest.raises(AgentError):
        AgentBook.load(tmp_path / "missing")
