"""Configuration of the tool-runner; the only module that reads its environment."""

from __future__ import annotations

import os
import socket

from dialtone_common.settings import ServiceSettings
from pydantic import Field, SecretStr


class ToolSettings(ServiceSettings):
    """Environment-driven settings (``TOOLS_MODULE``, ``TOOL_TIMEOUT_S``, ``DATABASE_URL``, ...)."""

    metrics_port: int = Field(default=9102, description="port of /metrics and /healthz (0: any free port)")
    tools_module: str | None = Field(
        default=None,
        description="dotted module name or path to a .py file with the user's @tool functions; "
        "unset: examples/tools.py in the working directory if it exists",
    )
    tool_timeout_s: float = Field(default=10.0, gt=0, description="timeout of a tool that sets none itself")
    max_concurrency: int = Field(default=64, gt=0, description="tool calls executed at once by this runner")
    database_url: SecretStr | None = Field(default=None, description="PostgreSQL DSN for ctx.db")
    drain_timeout_s: float = Field(default=30.0, ge=0, description="how long a stop waits for calls in flight")

    def runner_id(self) -> str:
        """The instance id stamped on every reply: ``INSTANCE_ID``, else host name and pid."""
        return self.instance_id or f"{socket.gethostname()}-{os.getpid()}"

    def dsn(self) -> str | None:
        """The database DSN in clear, for the pool only."""
        return self.database_url.get_secret_value() if self.database_url else None
