"""The Responses API simulator: it refuses what the SDK's types refuse, and answers a Response
whose text satisfies the requested schema."""

from __future__ import annotations

import json
from typing import Any, cast

import jsonschema
import openai
import pytest
from dialtone_sim.responses_api import ResponsesSimulator, satisfying

pytestmark = pytest.mark.unit

SCHEMA = {
    "type": "object",
    "properties": {
        "summary": {"type": "string"},
        "fields": {
            "type": "object",
            "properties": {
                "reason": {"type": "string"},
                "order_id": {"type": ["string", "null"]},
                "callback_requested": {"type": "boolean"},
                "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
                "items": {"type": "array", "items": {"type": "integer", "minimum": 3}},
            },
            "required": ["reason", "order_id", "callback_requested", "sentiment", "items"],
            "additionalProperties": False,
        },
        "verdict": {
            "type": "object",
            "properties": {"success": {"type": "boolean"}, "reason": {"type": "string"}},
            "required": ["success", "reason"],
            "additionalProperties": False,
        },
    },
    "required": ["summary", "fields", "verdict"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "name": "call_analysis", "schema": SCHEMA, "strict": True}


def test_a_generated_value_satisfies_its_schema_and_uses_the_words() -> None:
    value = satisfying(SCHEMA, ["refund", "order", "broken"], {"success": False})
    jsonschema.validate(value, SCHEMA)
    assert "refund order broken" in value["summary"]
    assert value["verdict"]["success"] is False
    assert value["fields"]["items"] == [3]


async def test_the_sdk_gets_a_schema_valid_response_with_usage() -> None:
    async with ResponsesSimulator(api_key="sk-sim") as sim:
        client = openai.AsyncOpenAI(api_key="sk-sim", base_url=sim.base_url, max_retries=0)
        response = await client.responses.create(
            model="gpt-5-mini", instructions="Analyse.", input="Transcript:\nCaller: my parcel never arrived",
            text=cast(Any, {"format": FORMAT}), store=False,
        )
        await client.close()


    jsonschema.validate(json.loads(response.output_text), SCHEMA)
    assert "parcel" in json.loads(response.output_text)["summary"]
    assert response.usage is not None and response.usage.input_tokens > 0
    assert sim.violations == [] and sim.server_violations == []


@pytest.mark.expect_sim_errors(r"'temprature'", r"strict must be true", r"additionalProperties must be false",
                               r"every property must be required")
async def test_unknown_keys_and_non_strict_schemas_are_violations() -> None:
    async with ResponsesSimulator() as sim:
        client = openai.AsyncOpenAI(api_key="x", base_url=sim.base_url, max_retries=0)
        with pytest.raises(openai.BadRequestError):
            await client.responses.create(model="gpt-5-mini", input="hi", extra_body={"temprature": 1})
        loose = {**FORMAT, "strict": False, "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}
        with pytest.raises(openai.BadRequestError):
            await client.responses.create(model="gpt-5-mini", input="hi", text=cast(Any, {"format": loose}))
        await client.close()
    joined = " | ".join(sim.violations)
    assert "unknown parameter 'temprature'" in joined
    assert "strict must be true" in joined and "additionalProperties" in joined


async def test_faults_on_demand() -> None:
    async with ResponsesSimulator() as sim:
        client = openai.AsyncOpenAI(api_key="x", base_url=sim.base_url, max_retries=0)
        sim.fail_next(1, 500)
        with pytest.raises(openai.InternalServerError):
            await client.responses.create(model="gpt-5-mini", input="hi")
        assert (await client.responses.create(model="gpt-5-mini", input="hi")).status == "completed"
        sim.always_fail = 503
        with pytest.raises(openai.APIStatusError):
            await client.responses.create(model="gpt-5-mini", input="hi")
        await client.close()
    assert len(sim.requests) == 3
