"""``dialtone eval`` without calls: scenario files and their errors, the published schema, tool
mocks, expectations against a session, pass-rate thresholds and the JUnit XML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import xmlschema
from dialtone_dev.eval_expect import Check, check_session
from dialtone_dev.eval_report import summarize, table, write_junit
from dialtone_dev.eval_runner import RunResult, dial_path
from dialtone_dev.eval_scenarios import (
    SCHEMA_PATH,
    Expectations,
    ScenarioError,
    load_scenario,
    load_scenarios,
    scenario_schema,
)  # fmt: skip
from dialtone_tools.mocks import MockError, mock_for

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
JUNIT_XSD = ROOT / "tests" / "e2e" / "schemas" / "junit.xsd"


def test_the_published_schema_is_the_models():
    assert json.loads(SCHEMA_PATH.read_text()) == scenario_schema()


def test_every_shipped_scenario_is_valid_and_each_kind_is_there():
    scenarios, refused = load_scenarios(ROOT / "agents")
    assert not refused, [e.problems for e in refused]
    names = {s.key for s in scenarios}
    assert {"support/order_status", "support/interruption", "support/crm_down", "support/transfer",
            "support/silent_caller", "support/dtmf", "support/handoff", "billing/refund"} <= names
    actions = {step.action for s in scenarios for step in s.spec.caller.script or []}
    assert {"say", "interrupt", "silence", "press", "hangup"} <= actions
    assert any(s.spec.mocks for s in scenarios)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def test_an_error_names_file_line_and_field(tmp_path: Path):
    path = write(tmp_path, """\
caller:
  script:
    - say: Hello
expect:
  outcome: resolved
  tools_called:
    - name: check_order_status
    - name: "not a tool name!"
  max_duration_s: -3
""")
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path, "support")
    problems = caught.value.problems
    assert any(p.startswith(f"{path}:8: expect.tools_called[1].name:") for p in problems), problems
    assert any(p.startswith(f"{path}:9: expect.max_duration_s:") and "greater than 0" in p for p in problems)


def test_unknown_fields_steps_with_two_actions_and_bad_regexes_are_refused(tmp_path: Path):
    path = write(tmp_path, """\
caller:
  script:
    - say: Hi
      press: "1"
expect:
  said: ["(unclosed"]
  sayd: ["typo"]
""")
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path, "support")
    text = "\n".join(caught.value.problems)
    assert f"{path}:3: caller.script[0]: a step needs exactly one of say, silence, press, interrupt, hangup" in text
    assert f"{path}:6: expect.said: '(unclosed' is not a regular expression" in text
    assert f"{path}:7: expect.sayd: Extra inputs are not permitted" in text


def test_yaml_syntax_errors_and_a_caller_without_script_or_persona(tmp_path: Path):
    with pytest.raises(ScenarioError) as caught:
        load_scenario(write(tmp_path, "caller:\n  script: [say: hi\nexpect: {}\n"), "a")
    assert "not valid YAML" in caught.value.problems[0] and ":3:" in caught.value.problems[0]
    with pytest.raises(ScenarioError) as caught:
        load_scenario(write(tmp_path, "caller:\n  number: '+15005550001'\n"), "a")
    assert caught.value.problems == [f"{tmp_path / 'bad.yaml'}:1: caller: a caller has either a script or a persona"]


def test_mocks_apply_only_to_test_calls_and_bad_mocks_fail_visibly():
    mocks = json.dumps({"lookup_customer": {"error": "CRM down"}, "check_order_status": {"result": {"eta": 2}}})
    assert mock_for({"dialtone_mocks": mocks}, "lookup_customer") is None  # not a test call
    test_call = {"dialtone_eval": "run-1", "dialtone_mocks": mocks}
    assert mock_for(test_call, "lookup_customer").error == "CRM down"
    assert mock_for(test_call, "check_order_status").result == {"eta": 2}
    assert mock_for(test_call, "set_outcome") is None  # not mocked: runs for real
    with pytest.raises(MockError):
        mock_for({"dialtone_eval": "r", "dialtone_mocks": "{nope"}, "x")
    with pytest.raises(MockError):
        mock_for({"dialtone_eval": "r", "dialtone_mocks": '{"x": {"result": 1, "error": "both"}}'}, "x")


SESSION = {
    "outcome": "transferred", "end_reason": "transferred", "transferred_to": "+15005550010",
    "duration_s": 31.5, "latency": {"sent_p95": 1840.0}, "agents": [],
    "tool_calls": [{"name": "check_order_status", "arguments": {"order_id": "a1002"}}],
    "transcript": [{"role": "agent", "text": "Hello, Acme."}, {"role": "caller", "text": "Refund please"},
                   {"role": "agent", "text": "Let me transfer you to a colleague."}],
}


def test_expectations_say_what_happened_instead():
    expect = Expectations.model_validate({
        "tools_called": [{"name": "check_order_status", "arguments": {"order_id": "A1002"}},
                         {"name": "lookup_customer"}],
        "tools_not_called": ["check_order_status"], "outcome": "refund_requested", "transferred": True,
        "ended_by_agent": True, "said": ["transfer"], "never_said": ["colleague"],
        "turn_latency_p95_ms": 1500, "max_duration_s": 60, "handed_off_to": "billing",
    })  # fmt: skip
    checks = {c.name: c for c in check_session(expect, SESSION)}
    assert checks["tool called: check_order_status"].passed  # argument subset, case-insensitive
    assert checks["tool called: lookup_customer"].actual == 'check_order_status({"order_id": "a1002"})'
    assert checks["tool not called: check_order_status"].actual == "called 1 time(s)"
    assert checks["outcome"].actual == "got 'transferred'" and not checks["outcome"].passed
    assert checks["transferred"].passed
    assert not checks["ended by agent"].passed  # a transfer is not the agent ending the call
    assert checks["said /transfer/"].passed
    assert checks["never said /colleague/"].actual == "agent said: Let me transfer you to a colleague."
    assert checks["turn latency p95"].actual == "1840 ms" and not checks["turn latency p95"].passed
    assert checks["max duration"].passed
    assert checks["handed off"].actual == "handoffs: none"


def result(scenario: str, run: int, passed: bool, error: str | None = None) -> RunResult:
    checks = [Check("outcome", passed, "'resolved'", "" if passed else "got None")]
    return RunResult(scenario, scenario.split("/")[0], run, "realtime", f"CA{run}", f"http://admin/calls/CA{run}",
                     checks, error, seconds=1.5)  # fmt: skip


def test_pass_rates_against_thresholds_and_the_report(tmp_path: Path):
    (tmp_path / "a" / "scenarios").mkdir(parents=True)
    (tmp_path / "a" / "scenarios" / "lenient.yaml").write_text("caller: {script: [say: hi]}\npass_rate: 0.5\n")
    (tmp_path / "a" / "scenarios" / "strict.yaml").write_text("caller: {script: [say: hi]}\n")
    scenarios, _ = load_scenarios(tmp_path)
    results = [result("a/lenient", 1, True), result("a/lenient", 2, False),
               result("a/strict", 1, True), result("a/strict", 2, False)]  # fmt: skip
    by_name = {s.scenario: s for s in summarize(results, scenarios, None)}
    assert by_name["a/lenient"].ok and not by_name["a/strict"].ok  # 50% meets 0.5, not the default 1.0
    assert {s.scenario: s.ok for s in summarize(results, scenarios, 0.5)} == {"a/lenient": True, "a/strict": True}
    report = table(results, list(by_name.values()))
    assert "a/strict" in report and "FAIL" in report
    assert "a/strict [realtime] run 2: http://admin/calls/CA2\n    - outcome: expected 'resolved', got None" in report


@pytest.mark.parametrize(
    ("passes", "argv", "code"),
    [
        ([True, True], [], 0),  # every run passed
        ([True, False], [], 1),  # 50 % under the default 100 %
        ([True, False], ["--threshold", "0.5"], 0),  # THRESHOLD=0.5 accepts it
        ([False, False], ["--threshold", "0.5"], 1),
    ],
)
async def test_the_commands_exit_code_follows_the_pass_rates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, passes: list[bool], argv: list[str], code: int
):
    """`make eval` in CI: 0 when every scenario meets its pass rate, else 1 (the calls themselves
    are end-to-end tests of their own, tests/e2e/test_eval.py)."""
    from dialtone_dev import eval as command
    from dialtone_dev.settings import EvalSettings

    (tmp_path / "a" / "scenarios").mkdir(parents=True)
    (tmp_path / "a" / "scenarios" / "x.yaml").write_text("caller: {script: [say: hi]}\n")

    async def calls(options, scenarios, engines, progress):  # the runs, without placing calls
        return [result("a/x", run, ok) for run, ok in enumerate(passes, 1)]

    monkeypatch.setattr(command, "run_scenarios", calls)
    settings = EvalSettings(openai_api_key=None, dialtone_data_dir=tmp_path)
    assert await command.evaluate(["--agents-dir", str(tmp_path), "--runs", "2", *argv], settings) == code


def test_junit_xml_validates_against_the_junit_schema(tmp_path: Path):
    schema = xmlschema.XMLSchema(JUNIT_XSD)
    results = [result("a/x", 1, True), result("a/x", 2, False), result("b/y", 1, False, error="call could not be placed")]
    path = tmp_path / "junit.xml"
    scenarios, _ = load_scenarios(tmp_path)
    write_junit(path, results, summarize(results, scenarios, None))
    schema.validate(path)
    text = path.read_text()
    assert 'failures="1"' in text and 'errors="1"' in text and "http://admin/calls/CA2" in text
    broken = tmp_path / "broken.xml"
    broken.write_text('<testsuites><testsuite name="s" tests="1" failures="0" errors="0">'
                      '<testcase name="only a name"/></testsuite></testsuites>')  # fmt: skip
    assert not schema.is_valid(broken)  # the validator can say no


def test_mocks_and_the_test_mark_travel_in_the_signed_webhook_query(tmp_path: Path):
    (tmp_path / "a" / "scenarios").mkdir(parents=True)
    (tmp_path / "a" / "scenarios" / "m.yaml").write_text(
        "caller: {script: [say: hi], variables: {tier: gold}}\nmocks: {lookup: {error: 'down: 50% + more'}}\n")
    (scenario,), _ = load_scenarios(tmp_path)
    path = dial_path(scenario, "run-7")
    assert path.startswith("/twilio-voice?agent=a&v_tier=gold&v_dialtone_eval=run-7&v_dialtone_mocks=")
    from urllib.parse import parse_qs, urlsplit

    query = parse_qs(urlsplit(path).query)
    assert json.loads(query["v_dialtone_mocks"][0]) == {"lookup": {"error": "down: 50% + more"}}


async def test_running_refuses_a_platform_on_simulators_and_engine_needs_its_own(tmp_path: Path, capsys) -> None:
    from dialtone_dev.eval import evaluate
    from dialtone_dev.settings import EvalSettings

    (tmp_path / "run.json").write_text(json.dumps({"simulated": True, "gateway_url": "http://127.0.0.1:9"}))
    settings = EvalSettings(dialtone_data_dir=tmp_path, openai_api_key=None)
    agents = str(ROOT / "agents")
    assert await evaluate(["--running", "--agents-dir", agents, "--scenario", "transfer"], settings) == 2
    assert "answers with its model simulators" in capsys.readouterr().err
    assert await evaluate(["--running", "--engine", "live", "--agents-dir", agents], settings) == 2
    assert "ENGINE needs a platform of the run's own" in capsys.readouterr().err
    (tmp_path / "run.json").unlink()
    assert await evaluate(["--running", "--agents-dir", agents, "--scenario", "transfer"], settings) == 2
    assert "no running platform" in capsys.readouterr().err


async def test_calls_run_side_by_side_and_one_that_fails_is_its_own_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run_on`` places ``concurrency`` calls at once, each under a tag of its own; a call that
    raises is reported failed and the others still finish, in scenario order."""
    import asyncio
    from types import SimpleNamespace

    from dialtone_dev import eval_runner

    running, most, tags = 0, 0, []

    async def fake_run_once(target, scenario, run, options, run_id, admin, voice, tag=0):  # noqa: ANN001, ANN202
        nonlocal running, most
        running += 1
        most = max(most, running)
        tags.append(tag)
        try:
            await asyncio.sleep(0.05)
            if scenario.key == "a/broken":
                raise RuntimeError("the admin API went away")
            return RunResult(scenario.key, scenario.agent, run, "realtime", f"CA{tag}", None)
        finally:
            running -= 1

    monkeypatch.setattr(eval_runner, "run_once", fake_run_once)
    scenarios = [SimpleNamespace(key=f"a/{name}", agent="a") for name in ("one", "broken", "two", "three")]
    told: list[str] = []
    target = eval_runner.Target("http://gw", "http://gw", "http://admin", "t", "t", "AC", None)
    options = eval_runner.EvalOptions(agents_dir=tmp_path, runs=2, concurrency=3)
    results = await eval_runner.run_on(target, scenarios, options, "run", lambda r: told.append(r.scenario))  # type: ignore[arg-type]  # stand-in scenarios: only key and agent are read
    assert [r.scenario for r in results] == [s.key for s in scenarios for _ in range(2)]
    assert most == 3 and len(set(tags)) == 8
    failed = [r for r in results if not r.passed]
    assert [r.scenario for r in failed] == ["a/broken", "a/broken"]
    assert failed[0].error == "the call failed: RuntimeError('the admin API went away')"
    assert sorted(told) == sorted(r.scenario for r in results)
