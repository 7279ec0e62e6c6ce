"""Declaring tools: schemas from type hints and docstrings, explicit schemas, loading, duplicates."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Annotated, Literal

import jsonschema
import pytest
from dialtone_tools import Registry, ToolContext, ToolDefinitionError, tool
from dialtone_tools.registry import Tool
from pydantic import BaseModel, Field

pytestmark = pytest.mark.unit


class Address(BaseModel):
    street: str
    city: str = "London"


def spec_of(fn) -> Tool:
    return fn.__dialtone_tool__


def test_schema_from_type_hints_and_docstring() -> None:
    @tool
    def book(
        ctx: ToolContext,
        day: Annotated[str, Field(description="ISO date")],
        party: int = 2,
        seating: Literal["inside", "terrace"] = "inside",
        note: str | None = None,
        address: Address | None = None,
    ) -> dict:
        """Book a table.

        A second paragraph the model does not need.

        Args:
            day: Ignored, because the Field description wins.
            party: How many people,
                including the caller.
            seating: Where to sit.
        """
        return {}

    found = spec_of(book)
    params = found.parameters
    assert found.description == "Book a table."
    assert found.context_param == "ctx"
    assert params["type"] == "object" and params["additionalProperties"] is False
    assert set(params["properties"]) == {"day", "party", "seating", "note", "address"}  # no ctx
    assert params["required"] == ["day"]
    assert params["properties"]["day"] == {"type": "string", "description": "ISO date"}
    assert params["properties"]["party"] == {
        "type": "integer", "default": 2, "description": "How many people, including the caller."
    }
    assert params["properties"]["seating"]["enum"] == ["inside", "terrace"]
    assert {"type": "null"} in params["properties"]["note"]["anyOf"]
    nested = params["properties"]["address"]["anyOf"][0]
    assert nested["type"] == "object" and nested["required"] == ["street"]
    assert "$defs" not in params and "$ref" not in str(params) and "title" not in params
    jsonschema.Draft202012Validator.check_schema(params)


def test_tool_with_no_arguments_still_has_an_object_schema() -> None:
    @tool(name="ping-now", description="Say pong.", timeout_s=2)
    async def ping() -> str:
        return "pong"

    found = spec_of(ping)
    assert found.name == "ping-now" and found.timeout_s == 2 and found.is_async
    assert found.parameters == {"type": "object", "properties": {}, "required": [],
                                "additionalProperties": False}
    assert found.spec(10).timeout_s == 2
    assert ping.__name__ == "ping"  # the function stays an ordinary function


def test_explicit_schema_is_checked_at_declaration() -> None:
    with pytest.raises(ToolDefinitionError, match="invalid parameters schema"):
        @tool(parameters={"type": "object", "properties": {"x": {"type": "nonsense"}}})
        def bad(x: str) -> str:
            return x

    with pytest.raises(ToolDefinitionError, match="type.*object"):
        @tool(parameters={"type": "string"})
        def not_object(x: str) -> str:
            return x


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("def f(x):\n    return x", "needs a type hint"),
        ("def f(*args: int):\n    return args", "ordinary keyword parameter"),
        ("def f(x: int, /):\n    return x", "ordinary keyword parameter"),
        ("def f() -> None:\n    pass", "cannot be offered"),  # name rejected below
    ],
)
def test_functions_that_cannot_be_tools(source: str, problem: str) -> None:
    namespace: dict = {}
    exec(source, namespace)
    name = "bad name!" if "cannot be offered" in problem else None
    with pytest.raises(ToolDefinitionError, match=problem):
        tool(name=name)(namespace["f"])


def test_builtins_are_always_registered() -> None:
    registry = Registry()
    assert registry.names()[:4] == ["set_outcome", "end_call", "transfer_call", "handoff"]
    assert Registry(builtins=False).names() == []


def test_duplicate_names_are_a_clear_error() -> None:
    @tool
    def end_call() -> str:
        """A user tool that collides with a built-in."""
        return "x"

    registry = Registry()
    with pytest.raises(ToolDefinitionError, match="duplicate tool name 'end_call'"):
        registry.add(end_call)


TOOLS_SOURCE = '''
from dialtone_tools import ToolContext, tool

SETUP_CALLS = []

@tool
def greet(name: str) -> str:
    """Greet someone."""
    return f"hello {name}"

@tool
async def whoami(ctx: ToolContext) -> str:
    """The caller's number."""
    return ctx.from_number

def helper():
    """Not a tool."""

async def setup(db):
    SETUP_CALLS.append(db)
'''


@pytest.fixture
def clean_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))


@pytest.mark.usefixtures("clean_imports")
def test_load_module_by_path(tmp_path: Path) -> None:
    (tmp_path / "my_tools.py").write_text(TOOLS_SOURCE)
    registry = Registry()
    module = registry.load("my_tools.py", cwd=tmp_path)
    assert registry.names()[4:] == ["greet", "whoami"]
    assert registry.setup_hooks == [module.setup]


@pytest.mark.usefixtures("clean_imports")
def test_load_module_by_dotted_name_from_cwd(tmp_path: Path) -> None:
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "__init__.py").write_text("")
    (tmp_path / "acme" / "phone_tools.py").write_text(TOOLS_SOURCE)
    registry = Registry()
    registry.load("acme.phone_tools", cwd=tmp_path)
    assert "greet" in registry.names() and "whoami" in registry.names()


@pytest.mark.usefixtures("clean_imports")
def test_default_module_is_examples_tools_if_present(tmp_path: Path) -> None:
    assert Registry().load(None, cwd=tmp_path) is None
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "tools.py").write_text(TOOLS_SOURCE)
    registry = Registry()
    assert registry.load(None, cwd=tmp_path) is not None
    assert "greet" in registry.names()


@pytest.mark.usefixtures("clean_imports")
def test_duplicate_names_in_user_module(tmp_path: Path) -> None:
    (tmp_path / "dupes.py").write_text(textwrap.dedent('''
        from dialtone_tools import tool

        @tool(name="lookup")
        def one() -> int:
            return 1

        @tool(name="lookup")
        def two() -> int:
            return 2
    '''))
    with pytest.raises(ToolDefinitionError, match="duplicate tool name 'lookup'"):
        Registry().load("dupes.py", cwd=tmp_path)


@pytest.mark.usefixtures("clean_imports")
def test_missing_module_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Registry().load("nope/tools.py", cwd=tmp_path)
