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
- Then the files with one, longest first: a run lasts as long as its busiest worker, and a long
  file handed out last would run alone at the end. The estimate is from each test's tier
  (markers): a fault scenario lasts tens of seconds, an end-to-end call about ten, an integration
  test a fraction of one, a unit test milliseconds.

Within a file the order is untouched; a run without xdist is untouched.
"""

from __future__ import annotations

import pytest

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

    def key(item: pytest.Item) -> tuple[bool, float, int]:
        file = _file(item)
        if file in end_to_end:
            return (True, -per_file[file], collected[file])
        return (False, 0.0, collected[file])

    items.sort(key=key)  # stable: a file's tests keep their order


def _file(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]
