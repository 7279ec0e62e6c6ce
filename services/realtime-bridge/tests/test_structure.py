"""The bridge's structure: no import circle between its modules (type-only imports included), and
provider JSON only at an engine's edge."""

from __future__ import annotations

import ast
import functools
import gc
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dialtone_bridge"
# The modules that may speak a provider's protocol (its JSON, its event names).
EDGES = {"realtime_engine", "realtime_warm", "live_engine"}  # the Realtime edge: its sockets and its warm pool


@functools.cache
def _modules() -> dict[Path, ast.Module]:
    """Every module of the bridge, parsed once, with no garbage collected meanwhile. On CPython 3.11
    (seen on 3.11.7), a finalizer run inside ``ast.parse`` (an earlier test's socket left to the
    collector, warning as it goes) made the AST constructor fail with "recursion depth mismatch" in
    one full run here. One collection for all of them: one per module cost a worker whose heap an
    end-to-end platform had grown 40 s in a full run."""
    gc.collect()
    gc.disable()
    try:
        return {path: ast.parse(path.read_text()) for path in sorted(PACKAGE.glob("*.py"))}
    finally:
        gc.enable()


def _parse(path: Path) -> ast.Module:
    return _modules()[path]


def _imports(path: Path) -> set[str]:
    """The dialtone_bridge modules ``path`` imports, at any level (functions, TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "dialtone_bridge":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("dialtone_bridge."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("dialtone_bridge."))
    return found


def test_no_module_of_the_bridge_imports_one_that_imports_it_back() -> None:
    graph = {p.stem: _imports(p) & {q.stem for q in PACKAGE.glob("*.py")} for p in PACKAGE.glob("*.py")}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            assert state.get(dep) != 1, "import circle: " + " -> ".join([*path, module, dep])
            if dep not in state:
                visit(dep, [*path, module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert {"session", "conversation", "callcontrol", "engine", "phase", "roles"} <= graph.keys()


def test_provider_events_are_named_only_at_an_engine_edge() -> None:
    provider_words = ("response.output_audio", "input_audio_buffer", "conversation.item", "response.done",
                      "session.update", "response.create")  # fmt: skip
    for path in PACKAGE.glob("*.py"):
        if path.stem in EDGES:
            continue
        strings = [n.value for n in ast.walk(_parse(path)) if isinstance(n, ast.Constant)
                   and isinstance(n.value, str)]  # fmt: skip
        code = [s for s in strings if not s.lstrip().startswith(("\n", " ")) or len(s) < 80]  # not docstrings
        leaked = [s for s in code for word in provider_words if word in s and len(s) < 200]
        assert not leaked, f"{path.name} builds or reads provider JSON: {leaked}"
