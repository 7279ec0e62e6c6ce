"""An agent's [analysis] table: checked against what strict structured outputs accept, with errors
that name the file and the field; priced by the text price table."""

from __future__ import annotations

from pathlib import Path

import pytest
from dialtone_common.analysis_config import (
    DEFAULT_TEXT_PRICES,
    AnalysisConfigError,
    load_agent_analysis,
    parse_analysis,
    response_schema,
    text_cost_usd,
)

pytestmark = pytest.mark.unit

WHERE = "agents/shop/agent.toml"


def test_missing_required_and_additional_properties_are_filled_in() -> None:
    config = parse_analysis("shop", {"schema": {"properties": {"reason": {"type": "string"}}}}, WHERE)
    assert config.schema == {"type": "object", "properties": {"reason": {"type": "string"}},
                             "additionalProperties": False, "required": ["reason"]}
    schema = response_schema(config)
    assert schema["required"] == ["summary", "fields", "verdict"] and schema["additionalProperties"] is False


@pytest.mark.parametrize(("raw", "fragment"), [
    ({"schema": {"type": "object", "properties": {"a": {"type": "string"}}, "required": []}},
     "[analysis].schema.required: strict mode needs every property required (missing ['a'])"),
    ({"schema": {"type": "object", "properties": {"a": {"type": "string", "minLenght": 2}}}},
     "[analysis].schema.properties.a: ['minLenght'] not supported"),
    ({"schema": {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "text"}}}}}},
     "[analysis].schema.properties.a.properties.b.type: 'text' is not one of"),
    ({"schema": {"type": "object", "properties": {"a": {"type": "array"}}}}, "properties.a.items: an array needs items"),
    ({"schema": {"type": "object", "properties": {}, "additionalProperties": True}}, "needs at least one property"),
    ({"schema": {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": True}},
     "[analysis].schema.additionalProperties: strict mode needs false"),
    ({"schema": {"type": "array", "items": {"type": "string"}}}, "root must be type = \"object\""),
    ({"summary": "yes"}, "[analysis].summary: must be true or false"),
    ({"success_criteria": ""}, "[analysis].success_criteria"),
    ({"modle": "gpt-5-mini"}, "unknown keys ['modle']"),
])  # fmt: skip
def test_a_schema_strict_mode_refuses_is_named_with_its_file_and_field(raw: dict, fragment: str) -> None:
    with pytest.raises(AnalysisConfigError) as err:
        parse_analysis("shop", raw, WHERE)
    assert str(err.value).startswith(WHERE) and fragment in str(err.value)


def test_the_agents_folder_is_read(tmp_path: Path) -> None:
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "agent.toml").write_text('[analysis]\nsummary = false\nsuccess_criteria = "Sold."\n')
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "agent.toml").write_text('voice = "marin"\n')
    configs = load_agent_analysis(tmp_path)
    assert list(configs) == ["shop"] and configs["shop"].summary is False
    assert "summary" not in response_schema(configs["shop"])["properties"]


def test_the_repository_agents_analysis_is_valid() -> None:
    assert "billing" in load_agent_analysis(Path(__file__).resolve().parents[2] / "agents")


def test_text_cost_by_model_with_snapshots_and_cached_tokens() -> None:
    tokens = {"input": 1_000_000, "cached": 400_000, "output": 100_000}
    # gpt-5-mini: 600k fresh at $0.25, 400k cached at $0.025, 100k out at $2.00.
    assert text_cost_usd(DEFAULT_TEXT_PRICES, "gpt-5-mini", tokens) == pytest.approx(0.15 + 0.01 + 0.2)
    assert text_cost_usd(DEFAULT_TEXT_PRICES, "gpt-5-mini-2025-08-07", tokens) == pytest.approx(0.36)
    assert text_cost_usd(DEFAULT_TEXT_PRICES, "some-other-model", tokens) == 0.0
