"""Acceptance of ``dialtone eval`` (``make eval``): the shipped agents' scenarios pass on both
engines against the simulators, through the real call path; a deliberately broken agent fails
with a report that names the expectation, what happened instead and the call; the exit code
follows the pass rates; the JUnit XML validates against the JUnit schema; a scenario file with an
error is refused with its file, line and field, and nothing is called.

The command runs here in-process, as CI would run it, on platforms of its own: one per engine,
side by side, each taking four calls at a time (the simulators tell the calls apart by the tag in
each caller's silence and follow each one's own script: a call that followed another's would fail
its expectations)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import xmlschema
from dialtone_dev.eval import evaluate
from dialtone_dev.settings import EvalSettings

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
JUNIT_XSD = Path(__file__).parent / "schemas" / "junit.xsd"

# An agent whose greeting was broken by an edit: curt, and not the company's.
BROKEN_AGENT = """\
numbers = ["+15005550093"]
greeting = "Yeah? What do you want?"
tools = ["lookup_customer", "set_outcome", "end_call"]
[limits]
idle_prompt_s = 0
"""
BROKEN_SCENARIO = """\
description: The greeting names the company and is polite.
caller:
  script:
    - say: Hi, I have a question.
    - hangup: true
expect:
  said: ["thanks for calling"]
  never_said: ["what do you want"]
model:
  turns:
    - caller: Hi, I have a question.
      agent: Sure, go ahead.
"""


@pytest.fixture
def agents_dir(tmp_path: Path) -> Path:
    target = tmp_path / "agents"
    shutil.copytree(ROOT / "agents", target)
    (target / "broken" / "scenarios").mkdir(parents=True)
    (target / "broken" / "agent.toml").write_text(BROKEN_AGENT)
    (target / "broken" / "system.md").write_text("You are the Acme front desk.")
    (target / "broken" / "scenarios" / "greeting.yaml").write_text(BROKEN_SCENARIO)
    return target


def settings() -> EvalSettings:
    return EvalSettings(openai_api_key=None, dialtone_data_dir=Path("/nonexistent"))


async def test_shipped_scenarios_pass_on_both_engines_and_a_broken_agent_fails_clearly(
    agents_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    junit = tmp_path / "report" / "junit.xml"
    code = await evaluate(["--engine", "both", "--junit", str(junit), "--agents-dir", str(agents_dir)], settings())
    out = capsys.readouterr().out
    assert "tests the PLUMBING" in out  # no key: said loudly
    rows = {m[0]: m[1] for m in re.findall(r"^(\S+/\S+\s+\S+)\s+\d+/\d+\s+\d+%\s+\d+%\s+(PASS|FAIL)$", out, re.M)}
    rows = {re.sub(r"\s+", " ", k): v for k, v in rows.items()}
    shipped = ["support/order_status", "support/interruption", "support/crm_down", "support/transfer",
               "support/silent_caller", "support/dtmf", "support/handoff", "billing/refund"]
    for engine in ("realtime", "live"):
        for name in shipped:
            assert rows.get(f"{name} {engine}") == "PASS", out
        assert rows.get(f"broken/greeting {engine}") == "FAIL", out
    assert code == 1  # a pass rate below its threshold fails the command
    # The report names each failed expectation, what the agent said instead, and links the call.
    failure = out.split("Failures:", 1)[1]
    assert re.search(r"broken/greeting \[realtime\] run 1: http://127\.0\.0\.1:\d+/calls/CA[0-9a-f]{32}", failure)
    assert "- said /thanks for calling/: expected an agent line matches /thanks for calling/, agent said: " \
           "Yeah? What do you want?" in failure
    assert "- never said /what do you want/: expected no agent line matches /what do you want/, agent said: " \
           "Yeah? What do you want?" in failure
    assert "support/" not in failure and "billing/" not in failure
    # JUnit XML for CI: valid against the JUnit schema, a failure per broken run, one suite per scenario.
    xmlschema.XMLSchema(JUNIT_XSD).validate(junit)
    xml = junit.read_text()
    assert xml.count("<testsuite ") == 2 * (len(shipped) + 1)
    assert xml.count("<failure ") == 2 and xml.count("<error ") == 0
    assert 'name="broken/greeting [live]" tests="1" failures="1"' in xml


async def test_a_scenario_file_with_an_error_is_refused_before_any_call(
    agents_dir: Path, capsys: pytest.CaptureFixture[str]
):
    bad = agents_dir / "support" / "scenarios" / "typo.yaml"
    bad.write_text("caller:\n  script:\n    - say: Hi\nexpect:\n  outcome: resolved\n  tools_caled: [end_call]\n")
    code = await evaluate(["--agents-dir", str(agents_dir)], settings())
    err = capsys.readouterr().err
    assert code == 2
    assert f"{bad}:6: expect.tools_caled: Extra inputs are not permitted" in err


PERSONA_SCENARIO = """\
description: An impatient customer wants to know where their order is.
caller:
  number: "+15005550001"
  persona:
    goal: Find out where order A1002 is.
    manner: impatient, short sentences
    max_turns: 2
expect:
  said: ["shipped"]
  criteria: ["The agent told the caller the order's delivery status."]
model:
  turns:
    - agent: Your order A1002 has shipped and arrives in two days.
"""


async def test_a_persona_caller_and_the_llm_judge_through_the_responses_api(agents_dir: Path):
    """The persona's lines and the judge's verdicts come from a Responses API (here the simulator,
    which validates every request against the SDK's own types and requires strict schemas)."""
    from dialtone_dev.eval_runner import EvalOptions, run_scenarios
    from dialtone_dev.eval_scenarios import load_scenario
    from dialtone_sim.responses_api import ResponsesSimulator

    path = agents_dir / "support" / "scenarios" / "persona.yaml"
    path.write_text(PERSONA_SCENARIO)
    scenario = load_scenario(path, "support")
    async with ResponsesSimulator(api_key="sk-eval-text") as text_api:
        options = EvalOptions(agents_dir=agents_dir, openai_api_key="sk-eval-text", openai_base_url=text_api.base_url,
                              simulate_models=True)  # fmt: skip
        (result,) = await run_scenarios(options, [scenario], ["realtime"], lambda _: None)
        requests = list(text_api.requests)
    assert result.passed, result.failures
    # The persona spoke (a line of the Responses API's making) and heard the agent.
    persona = [r for r in requests if r["text"]["format"]["name"] == "caller_line"]
    judge = [r for r in requests if r["text"]["format"]["name"] == "verdict"]
    assert len(persona) == 1 and "Find out where order A1002 is." in persona[0]["instructions"]
    assert any(line.startswith("Caller: ") and line != "Caller: " for line in result.transcript), result.transcript
    # The judge read the call and its reasoning is kept beside the verdict.
    assert len(judge) == 1 and "shipped and arrives in two days" in str(judge[0]["input"])
    (criterion,) = [c for c in result.checks if c.name.startswith("criterion: ")]
    assert criterion.passed and criterion.reasoning


async def test_persona_scenarios_need_a_key(agents_dir: Path, capsys: pytest.CaptureFixture[str]):
    (agents_dir / "support" / "scenarios" / "persona.yaml").write_text(PERSONA_SCENARIO)
    code = await evaluate(["--agents-dir", str(agents_dir), "--scenario", "persona"], settings())
    assert code == 2
    assert "need OPENAI_API_KEY" in capsys.readouterr().err
