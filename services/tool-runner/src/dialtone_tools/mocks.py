"""Tool mocks of test calls: a scenario may fix a tool's result or error, so a test call never
touches the real systems behind that tool.

The mocks travel with the call: ``dialtone eval`` dials the voice webhook with the variables
``dialtone_eval`` (the test run) and ``dialtone_mocks`` (JSON: ``{"tool": {"result": ...} |
{"error": "..."}}``). Variables come only from the signed webhook, so only whoever holds the
Twilio auth token can mock a tool, and only on a call marked as a test call. The model's
arguments are still validated against the tool's schema first: a mocked tool is called as the
real one would be. Tools that are not mocked run for real.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["EVAL_VARIABLE", "MOCKS_VARIABLE", "Mock", "MockError", "mock_for"]

EVAL_VARIABLE = "dialtone_eval"
MOCKS_VARIABLE = "dialtone_mocks"


class MockError(ValueError):
    """The call's mocks are not the JSON a scenario gives."""


@dataclass(frozen=True)
class Mock:
    result: Any = None
    error: str | None = None


def mock_for(variables: dict[str, str], tool: str) -> Mock | None:
    """The mock of ``tool`` on this call, if it is a test call that mocks it.

    Raises:
        MockError: the test call's mocks cannot be read (the tool call fails with this, visibly).
    """
    raw = variables.get(MOCKS_VARIABLE)
    if raw is None or not variables.get(EVAL_VARIABLE):
        return None
    try:
        mocks = json.loads(raw)
    except ValueError as exc:
        raise MockError(f"the test call's tool mocks are not JSON: {exc}") from None
    if not isinstance(mocks, dict):
        raise MockError("the test call's tool mocks are not an object of tool names")
    spec = mocks.get(tool)
    if spec is None:
        return None
    if not isinstance(spec, dict) or ("result" in spec) == ("error" in spec):
        raise MockError(f"the mock of {tool} needs either a result or an error")
    if "error" in spec:
        return Mock(error=str(spec["error"]))
    return Mock(result=spec["result"])
