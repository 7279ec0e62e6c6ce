"""The report of a run: pass rate per scenario against its threshold, each failure with the
expectation that failed and what happened instead, the link to every call, and JUnit XML for CI."""

from __future__ import annotations

import socket
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from dialtone_dev.eval_runner import RunResult
from dialtone_dev.eval_scenarios import Scenario

__all__ = ["ScenarioSummary", "summarize", "table", "write_junit"]


@dataclass(frozen=True)
class ScenarioSummary:
    scenario: str
    engine: str
    runs: int
    passed: int
    threshold: float

    @property
    def rate(self) -> float:
        return self.passed / self.runs if self.runs else 0.0

    @property
    def ok(self) -> bool:
        return self.runs > 0 and self.rate >= self.threshold


def summarize(results: list[RunResult], scenarios: list[Scenario], threshold: float | None) -> list[ScenarioSummary]:
    """Pass rate per scenario and engine; a scenario's own ``pass_rate`` wins over the command's."""
    own = {s.key: s.spec.pass_rate for s in scenarios}
    grouped: dict[tuple[str, str], list[RunResult]] = defaultdict(list)
    for r in results:
        grouped[(r.scenario, r.engine)].append(r)
    out = []
    for (key, engine), runs in grouped.items():
        wanted = own.get(key)
        needed = wanted if wanted is not None else threshold if threshold is not None else 1.0
        out.append(ScenarioSummary(key, engine, len(runs), sum(r.passed for r in runs), needed))
    return out


def table(results: list[RunResult], summaries: list[ScenarioSummary]) -> str:
    """The text report: one row per scenario and engine, then each failed call."""
    width = max([len(s.scenario) for s in summaries] + [8])
    lines = [f"{'scenario':<{width}}  {'engine':<8}  {'passed':>7}  {'rate':>5}  {'needs':>5}  verdict"]
    for s in summaries:
        lines.append(f"{s.scenario:<{width}}  {s.engine:<8}  {s.passed:>3}/{s.runs:<3}  {s.rate:>5.0%}  "
                     f"{s.threshold:>5.0%}  {'PASS' if s.ok else 'FAIL'}")  # fmt: skip
    failed = [r for r in results if not r.passed]
    if failed:
        lines += ["", "Failures:"]
        for r in failed:
            lines.append(f"  {r.scenario} [{r.engine}] run {r.run}: {r.call_url or 'no call'}")
            lines += [f"    - {f}" for f in r.failures]
    return "\n".join(lines)


def write_junit(path: Path, results: list[RunResult], summaries: list[ScenarioSummary]) -> None:
    """JUnit XML: a ``testsuite`` per scenario and engine, a ``testcase`` per call; a failed
    call's ``failure`` lists what failed and links the call."""
    root = ET.Element("testsuites", name="dialtone eval", tests=str(len(results)),
                      failures=str(sum(1 for r in results if not r.passed and r.error is None)),
                      errors=str(sum(1 for r in results if r.error is not None)),
                      time=f"{sum(r.seconds for r in results):.3f}")  # fmt: skip
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    for index, s in enumerate(summaries):
        runs = [r for r in results if r.scenario == s.scenario and r.engine == s.engine]
        suite = ET.SubElement(root, "testsuite", name=f"{s.scenario} [{s.engine}]", tests=str(len(runs)),
                              failures=str(sum(1 for r in runs if not r.passed and r.error is None)),
                              errors=str(sum(1 for r in runs if r.error is not None)), skipped="0",
                              time=f"{sum(r.seconds for r in runs):.3f}", timestamp=stamp,
                              hostname=socket.gethostname() or "localhost", id=str(index),
                              package=s.scenario.split("/")[0])  # fmt: skip
        props = ET.SubElement(suite, "properties")
        for name, value in (("pass_rate", f"{s.rate:.3f}"), ("threshold", f"{s.threshold:.3f}"),
                            ("verdict", "pass" if s.ok else "fail")):  # fmt: skip
            ET.SubElement(props, "property", name=name, value=value)
        for r in runs:
            case = ET.SubElement(suite, "testcase", name=f"run {r.run}", classname=f"{s.scenario}.{s.engine}",
                                 time=f"{r.seconds:.3f}")  # fmt: skip
            detail = "\n".join([*r.failures, f"call: {r.call_url or 'none'}"])
            if r.error is not None:
                ET.SubElement(case, "error", message=r.error[:500], type="error").text = detail
            elif not r.passed:
                ET.SubElement(case, "failure", message=r.failures[0][:500], type="expectation").text = detail
            ET.SubElement(case, "system-out").text = f"call: {r.call_url or 'none'}"
        ET.SubElement(suite, "system-out").text = ""
        ET.SubElement(suite, "system-err").text = ""
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
