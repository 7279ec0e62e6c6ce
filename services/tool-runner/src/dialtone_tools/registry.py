"""Declaring tools (``@tool``) and the ``Registry`` that holds them and loads the user's module."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, overload

import jsonschema
from dialtone_proto import ToolSpec
from pydantic import BaseModel

from dialtone_tools import schema
from dialtone_tools.errors import ToolDefinitionError

log = logging.getLogger(__name__)

_MARK = "__dialtone_tool__"
DEFAULT_MODULE = Path("examples") / "tools.py"


@dataclass(frozen=True)
class Tool:
    """One registered tool: the function and everything needed to describe and validate a call.

    Attributes:
        name: The name the model calls it by.
        description: What the model reads to decide when to call it.
        parameters: The JSON schema of its arguments (a Realtime function tool's ``parameters``).
        fn: The user's function, sync or async.
        timeout_s: Its own timeout, or None for the runner's default.
        model: The pydantic model of the arguments (tools declared by type hints).
        validator: The JSON-schema validator (tools declared with explicit ``parameters``).
        context_param: The parameter that receives the ``ToolContext``, if any.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any]
    timeout_s: float | None = None
    model: type[BaseModel] | None = None
    validator: jsonschema.Draft202012Validator | None = field(default=None, compare=False)
    context_param: str | None = None

    @property
    def is_async(self) -> bool:
        """Whether the function is a coroutine function (else it runs in the thread pool)."""
        return inspect.iscoroutinefunction(self.fn)

    def spec(self, default_timeout_s: float) -> ToolSpec:
        """The catalog entry the bridge hands to the model."""
        return ToolSpec(
            name=self.name,
            description=self.description,
            parameters=self.parameters,
            timeout_s=self.timeout_s or default_timeout_s,
        )


def make_tool(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: dict[str, Any] | None = None,
    timeout_s: float | None = None,
) -> Tool:
    """Describe ``fn`` as a ``Tool`` (see ``tool`` for the arguments)."""
    name = name or fn.__name__
    if timeout_s is not None and timeout_s <= 0:
        raise ToolDefinitionError(f"tool {name}: timeout_s must be positive")
    model, context_param, summary = schema.signature_model(fn, name)
    if parameters is not None:
        validator = schema.explicit_validator(name, parameters)
        built = Tool(name, description or summary, parameters, fn, timeout_s, None, validator, context_param)
    else:
        built = Tool(name, description or summary, schema.model_parameters(model), fn, timeout_s, model, None,
                     context_param)
    try:
        built.spec(1.0)
    except ValueError as exc:
        raise ToolDefinitionError(f"tool {name!r} cannot be offered to the model: {exc}") from exc
    return built


@overload
def tool(fn: Callable[..., Any], /) -> Callable[..., Any]: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: dict[str, Any] | None = None,
    timeout_s: float | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: dict[str, Any] | None = None,
    timeout_s: float | None = None,
) -> Any:
    """Mark a plain sync or async function as a tool the agent can call.

    Use it bare (``@tool``) or with options (``@tool(timeout_s=3)``). The function stays an ordinary
    function (call it in your own tests); the runner finds it in your tools module.

    Args:
        fn: The function, when used bare.
        name: The name the model sees; defaults to the function's name.
        description: What the tool does; defaults to the docstring's first paragraph.
        parameters: An explicit JSON schema of the arguments (validated with Draft 2020-12);
            by default it is derived from the type hints.
        timeout_s: This tool's timeout; defaults to the runner's ``TOOL_TIMEOUT_S``.

    Raises:
        ToolDefinitionError: The function cannot be described as a tool.
    """

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        setattr(f, _MARK, make_tool(f, name=name, description=description, parameters=parameters,
                                    timeout_s=timeout_s))
        return f

    return mark(fn) if fn is not None else mark


def tools_in(module: ModuleType) -> Iterator[Tool]:
    """Every ``@tool`` defined in (or imported into) ``module``, in definition order."""
    for value in vars(module).values():
        found = getattr(value, _MARK, None)
        if isinstance(found, Tool):
            yield found


class Registry:
    """The tools this runner serves, by name; built-ins first, then the user's module.

    Args:
        builtins: Register the built-in call-control tools (``set_outcome``, ``end_call``,
            ``transfer_call``, ``handoff``).
    """

    def __init__(self, *, builtins: bool = True) -> None:
        self._tools: dict[str, Tool] = {}
        self.setup_hooks: list[Callable[..., Any]] = []
        if builtins:
            from dialtone_tools import builtins as builtin_module

            self.add_module(builtin_module)

    def add(self, item: Tool | Callable[..., Any]) -> Tool:
        """Register a ``Tool`` or a ``@tool`` function; the same tool twice is a no-op.

        Raises:
            ToolDefinitionError: Another tool already has this name, or ``item`` is no tool.
        """
        found = item if isinstance(item, Tool) else getattr(item, _MARK, None)
        if not isinstance(found, Tool):
            raise ToolDefinitionError(f"{item!r} is not a tool: decorate it with @tool")
        existing = self._tools.get(found.name)
        if existing is not None and existing.fn is not found.fn:
            raise ToolDefinitionError(
                f"duplicate tool name {found.name!r}: {_where(existing.fn)} and {_where(found.fn)}"
            )
        self._tools[found.name] = found
        return found

    def add_module(self, module: ModuleType) -> int:
        """Register every tool of ``module`` and remember its ``setup`` hook; returns how many tools."""
        count = 0
        for found in tools_in(module):
            self.add(found)
            count += 1
        hook = getattr(module, "setup", None)
        if callable(hook) and not hasattr(hook, _MARK):
            self.setup_hooks.append(hook)
        return count

    def load(self, target: str | None, cwd: Path | None = None) -> ModuleType | None:
        """Import the user's tools module and register its tools.

        Args:
            target: A dotted module name importable from ``cwd``, or a path to a ``.py`` file; None
                means ``examples/tools.py`` under ``cwd`` if it exists, else no user tools.
            cwd: Directory the name or path is relative to; defaults to the working directory.

        Returns:
            The module, or None when there was nothing to load.
        """
        cwd = (cwd or Path.cwd()).resolve()
        if target is None:
            if not (cwd / DEFAULT_MODULE).is_file():
                log.info("no TOOLS_MODULE and no %s: serving the built-in tools only", DEFAULT_MODULE)
                return None
            target = str(cwd / DEFAULT_MODULE)
        module = import_tools_module(target, cwd)
        count = self.add_module(module)
        log.info("loaded %d tools from %s", count, target)
        return module

    def get(self, name: str) -> Tool | None:
        """The tool called ``name``, or None."""
        return self._tools.get(name)

    def names(self) -> list[str]:
        """Names of every registered tool."""
        return list(self._tools)

    def specs(self, default_timeout_s: float) -> list[ToolSpec]:
        """The catalog, in registration order."""
        return [t.spec(default_timeout_s) for t in self._tools.values()]

    def __len__(self) -> int:
        return len(self._tools)


def import_tools_module(target: str, cwd: Path) -> ModuleType:
    """Import ``target`` (dotted name or ``.py`` path) with ``cwd`` importable, as users expect."""
    if str(cwd) not in sys.path:
        sys.path.insert(0, str(cwd))
    path = Path(target)
    if target.endswith(".py") or path.suffix == ".py" or "/" in target or "\\" in target:
        path = path if path.is_absolute() else cwd / path
        if not path.is_file():
            raise FileNotFoundError(f"tools module {path} does not exist")
        # A unique module name per file, registered in sys.modules so that pickling, dataclasses and
        # pydantic's forward references resolve against it like any imported module.
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        module_name = f"dialtone_user_tools_{path.stem}_{digest}"
        if module_name in sys.modules:
            return sys.modules[module_name]
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import tools module {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
        return module
    return importlib.import_module(target)


def _where(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)!s}"
