"""Criteria in plain words, judged by an LLM from the call's transcript and tool calls.

One Responses API request per criterion, with a strict JSON schema (structured output), so each
verdict is a boolean with its reasoning, and the reasoning is kept in the report beside the
verdict: an operator reads why a run failed, not only that it did.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from dialtone_dev.eval_expect import Check

if TYPE_CHECKING:
    from dialtone_dev.eval_runner import EvalOptions

__all__ = ["JUDGE_SCHEMA", "judge_criteria", "transcript_text"]

JUDGE_SCHEMA = {
    "type": "object",
    "properties": {
        "reasoning": {"type": "string", "description": "Why, citing what was said or done, in two sentences."},
        "passed": {"type": "boolean", "description": "Whether the call meets the criterion."},
    },
    "required": ["reasoning", "passed"],
    "additionalProperties": False,
}

INSTRUCTIONS = (
    "You review one phone call between a caller and a company's voice agent. Decide whether the call "
    "meets the criterion given, from the transcript and the agent's tool calls only. Be strict: when the "
    "call does not show it, it is not met."
)


def transcript_text(session: dict[str, Any]) -> str:
    """The call as the judge reads it: lines in order, then the tool calls with their results."""
    lines = [f"{'Agent' if line['role'] == 'agent' else 'Caller'}: {line.get('full_text') or line.get('text') or ''}"
             for line in session.get("transcript") or []]  # fmt: skip
    tools = [f"- {t['name']}({json.dumps(t.get('arguments'))}) -> {json.dumps(t.get('result') or t.get('error'))[:300]}"
             for t in session.get("tool_calls") or []]  # fmt: skip
    return "\n".join(["Transcript:", *lines, "", "Tool calls:", *(tools or ["(none)"]),
                      f"\nOutcome: {session.get('outcome')}; ended: {session.get('end_reason')}"])  # fmt: skip


async def judge_criteria(options: EvalOptions, criteria: list[str], session: dict[str, Any]) -> list[Check]:
    """A check per criterion, with the judge's reasoning; a judge that fails is a failed check."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key=options.openai_api_key, base_url=options.openai_base_url)
    call = transcript_text(session)
    checks = []
    try:
        for criterion in criteria:
            name = f"criterion: {criterion}"
            try:
                response = await client.responses.create(
                    model=options.eval_model,
                    instructions=INSTRUCTIONS,
                    input=[{"role": "user", "content": [
                        {"type": "input_text", "text": f"Criterion: {criterion}\n\n{call}"}]}],
                    text={"format": {"type": "json_schema", "name": "verdict", "schema": JUDGE_SCHEMA,
                                     "strict": True}},
                    store=False,
                )  # fmt: skip
                verdict = json.loads(response.output_text)
                checks.append(Check(name, bool(verdict["passed"]), "met", "not met",
                                    reasoning=str(verdict["reasoning"])))  # fmt: skip
            except Exception as exc:  # the SDK's errors, or an answer off the schema
                checks.append(Check(name, False, "met", f"the judge failed: {type(exc).__name__}: {exc}"))
    finally:
        await client.close()
    return checks
