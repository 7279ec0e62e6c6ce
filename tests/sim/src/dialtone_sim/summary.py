"""Sections at the end of a test run's output (figures a suite measured, where a test left an
artifact), printed with or without ``-s``, so that ``make test`` shows them.

A conftest adds lines with :func:`section`, during the tests or in its own ``pytest_sessionfinish``
(which runs before this plugin's). With pytest-xdist (``make test`` runs the tests on several
workers) a worker's output is not shown: each worker hands its sections to the controller at its
end, which prints them, a section's lines in the workers' order (gw0, gw1, ...), and the sections
by title.
"""

from __future__ import annotations

from typing import Any

import pytest

_SECTIONS = pytest.StashKey[dict[str, list[str]]]()
_FROM_WORKERS = pytest.StashKey[dict[str, dict[str, list[str]]]]()
_WORKER_OUTPUT_KEY = "dialtone_sections"


def section(config: pytest.Config, title: str) -> list[str]:
    """The lines of the section ``title`` at the end of this process's output; append to it."""
    return config.stash.setdefault(_SECTIONS, {}).setdefault(title, [])


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """On an xdist worker: the sections go to the controller with the worker's other output."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput[_WORKER_OUTPUT_KEY] = {t: list(lines) for t, lines in session.config.stash.get(_SECTIONS, {}).items()}


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """On the xdist controller: keep what a worker that finished handed over."""
    sections = getattr(node, "workeroutput", {}).get(_WORKER_OUTPUT_KEY)
    if sections:
        node.config.stash.setdefault(_FROM_WORKERS, {})[node.gateway.id] = sections


def _worker_order(worker_id: str) -> tuple[int, str]:
    digits = worker_id.lstrip("gw")
    return (int(digits), worker_id) if digits.isdigit() else (1 << 30, worker_id)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    merged: dict[str, list[str]] = {}
    sources = [config.stash.get(_SECTIONS, {})]
    from_workers = config.stash.get(_FROM_WORKERS, {})
    sources += [from_workers[w] for w in sorted(from_workers, key=_worker_order)]
    for sections in sources:
        for title, lines in sections.items():
            merged.setdefault(title, []).extend(lines)
    for title in sorted(merged):
        if merged[title]:
            terminalreporter.section(title)
            for line in merged[title]:
                terminalreporter.write_line(line)
