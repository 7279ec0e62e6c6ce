"""The one exception tool authors raise on purpose."""


class ToolError(Exception):
    """An expected failure whose message is meant for the model (and so for the caller).

    Raise it from a tool to answer ``{"error": "<message>"}`` without a traceback in the logs, e.g.
    ``raise ToolError("no order with that number")``. Any other exception is answered as
    ``{"error": "<ExceptionType>: <message>"}`` and logged with its traceback.
    """


class ToolDefinitionError(TypeError):
    """A tool that cannot be registered: bad signature, bad schema or a duplicate name."""
