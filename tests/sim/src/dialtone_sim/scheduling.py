"""The order in which pytest-xdist hands out test files: files without an end-to-end test first,
then the files with one, the longest first.

``make test`` runs the tests on several xdist workers, a file at a time (``--dist loadfile``: a
file's tests share their module fixtures and keep their order), files in the order collected
(``--no-loadscope-reorder``). On the workers only, this plugin collects them in that order:

- Files without an end-to-end test first. The end-to-end platform, once a worker has started it,
  runs until the worker ends, on the worker's session NATS and PostgreSQL: its tool-runner answers
  tool calls and its writer consumes the stream the integration tests use. In a run in one process
  it starts after them (tests/e2e comes after proto, common and services); the workers keep that:
  a worker takes files from the front of one queue, so no worker has started it before its last
  file without an end-to-end test.
- Then the files with one. Both parts longest first: a run lasts as long as its busiest worker,
  and a long file handed out last would run alone at the end (a worker also holds its next file
  while it runs one). How long: :data:`MEASURED_S` for the long files, else an estimate from each
  test's tier (markers): a fault scenario lasts tens of seconds, an end-to-end call about ten, an
  integration test a fraction of one, a unit test milliseconds. A stale figure only makes the
  order less good, never a test wrong.

The fault suite (tests/faults) is one unit, on one worker: its files share one set of servers and
one platform (session fixtures), and its scenarios boot, kill and freeze them; two workers
running them at once, each with its own set, loaded the machine enough for the end-to-end call
tests' timing (the barge-in test's 40 ms) to miss.

A file parametrised on the engine (:data:`BY_ENGINE`) is two units, one per engine, so that its
halves run on two workers at once.

Within a file the order is untouched; a run without xdist is untouched.
"""

from __future__ import annotations

from typing import Any

import pytest

# Seconds the files of 10 s or more took (first test's start to last test's end) in full runs of
# `make test` on 3 workers on 2 cores; a file not listed is estimated from its tests' markers.
MEASURED_S = {
    "tests/e2e/test_eval.py": 70,  # four calls at a time per platform
    "tests/e2e/test_dashboard_tests.py": 30,
    "tests/e2e/test_eval_worker.py": 40,
    "tests/faults/test_outages.py": 145,
    "tests/e2e/test_conversation.py": 85,
    "tests/faults/test_drain.py": 165,  # with the gateway moves: 164 s alone
    "tests/e2e/test_call_control.py": 32,
    "tests/e2e/test_bridge_loss.py": 69,
    "tests/e2e/test_dashboard_pages.py": 50,
    "tests/e2e/test_resilience.py": 40,
    "tests/e2e/test_make_run.py": 41,
    "dev/tests/test_run_files.py": 41,
    "tests/e2e/test_call.py": 35,
    "deploy/tests/test_dashboard.py": 33,
    "tests/scale/test_instances.py": 30,
    "deploy/tests/test_images.py": 35,
    "tests/e2e/test_takeover.py": 24,
    "tests/e2e/test_call_data.py": 20,
    "tests/e2e/test_contract.py": 18,
    "services/admin-api/tests/test_api.py": 15,
    "services/transcript-writer/tests/test_recorder_audio.py": 11,
    # Files added since, estimated from single runs until a full run measures them.
    "tests/e2e/test_analysis.py": 85,
    "tests/e2e/test_live.py": 63,
    "tests/e2e/test_engines.py": 246,  # in two halves by engine (BY_ENGINE), ~125 s each
    "services/transcript-writer/tests/test_recording_s3.py": 25,
    "tests/e2e/test_dashboard_webhooks.py": 35,
    "tests/e2e/test_redaction.py": 35,
    "tests/e2e/test_dashboard_audit.py": 36,
    "tests/e2e/test_webhooks.py": 30,
    "services/transcript-writer/tests/test_webhooks.py": 30,
    "tests/e2e/test_bus_auth.py": 25,
    "tests/e2e/test_first_words.py": 16,
    "tests/e2e/test_dashboard_analysis.py": 20,
    "services/admin-api/tests/test_signins.py": 10,
}

# Seconds a test of each tier takes, roughly (see the run's --durations).
_FAULT_SCENARIO_S = 25.0
_E2E_S = 10.0
_INTEGRATION_S = 0.5
_OTHER_S = 0.05


def _estimate(item: pytest.Item) -> float:
    if item.get_closest_marker("e2e"):
        return _FAULT_SCENARIO_S if item.get_closest_marker("faults") else _E2E_S
    if item.get_closest_marker("integration"):
        return _INTEGRATION_S
    return _OTHER_S


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput"):  # not an xdist worker
        return
    per_file: dict[str, float] = {}
    end_to_end: set[str] = set()
    for item in items:
        file = _file(item)
        per_file[file] = per_file.get(file, 0.0) + _estimate(item)
        if item.get_closest_marker("e2e"):
            end_to_end.add(file)
    collected = {file: i for i, file in enumerate(dict.fromkeys(_file(item) for item in items))}

    per_file |= {file: seconds for file, seconds in MEASURED_S.items() if file in per_file}

    def key(item: pytest.Item) -> tuple[bool, float, int]:
        file = _file(item)
        return (file in end_to_end, -per_file[file], collected[file])

    items.sort(key=key)  # stable: a file's tests keep their order


def _file(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


FAULT_SUITE = "tests/faults"
# Files parametrised on the engine whose two halves are handed out as units of their own (each
# worker has its own platform and simulators, so the halves need nothing of each other).
BY_ENGINE = {"tests/e2e/test_engines.py"}


@pytest.hookimpl(optionalhook=True, tryfirst=True)  # before xdist's own (the first answer is taken)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile``, with the fault suite's files one unit (see the module docstring)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FilesAndFaultSuite(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            if file in BY_ENGINE:  # the same suite on each engine: two units, on two workers
                return f"{file}[{'live' if 'live' in nodeid.rsplit('[', 1)[-1] else 'realtime'}]"
            return FAULT_SUITE if file.startswith(FAULT_SUITE + "/") else file

    return FilesAndFaultSuite(config, log)


# ---- what each file took, printed at the end of a run (to keep MEASURED_S true) ---------------
_SPANS = pytest.StashKey[dict[tuple[str, str], list[float]]]()


@pytest.hookimpl
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """On the controller (or a run in one process): each file's first start and last end, per
    worker. (A report's ``start`` and ``stop`` are wall-clock times.)"""
    config = _CONFIG.get("config")
    if config is None or hasattr(config, "workerinput"):
        return
    worker = getattr(report, "node", None)
    key = (_FAULT_OR_FILE(report.nodeid), getattr(worker, "gateway", None) and worker.gateway.id or "main")
    span = config.stash.setdefault(_SPANS, {}).setdefault(key, [report.start, report.stop])
    span[0], span[1] = min(span[0], report.start), max(span[1], report.stop)


_CONFIG: dict[str, pytest.Config] = {}


@pytest.hookimpl
def pytest_configure(config: pytest.Config) -> None:
    _CONFIG["config"] = config


def _FAULT_OR_FILE(nodeid: str) -> str:  # noqa: N802 - a small helper named like the constant it uses
    file = nodeid.split("::", 1)[0]
    return FAULT_SUITE + " (one unit)" if file.startswith(FAULT_SUITE + "/") else file


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    spans = config.stash.get(_SPANS, {})
    if hasattr(config, "workerinput") or not spans:
        return
    from dialtone_sim.summary import section

    lines = section(config, "test files of 10 s or more (seconds, first start to last end, on which worker)")
    for (file, worker), (start, stop) in sorted(spans.items(), key=lambda kv: kv[1][0] - kv[1][1]):
        if stop - start >= 10:
            lines.append(f"    {stop - start:6.0f}  {worker:5}  {file}")
