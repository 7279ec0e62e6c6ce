"""Start-up of the tool-runner (``python -m dialtone_tools``)."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from dialtone_common import logs, runtime

from dialtone_tools.service import ToolRunner
from dialtone_tools.settings import ToolSettings


async def serve(stack: AsyncExitStack, stop: asyncio.Event) -> None:
    """Start one runner owned by ``stack``; ``runtime.run`` stops it (draining) on SIGTERM."""
    settings = ToolSettings()
    logs.setup(settings.log_level, "tool-runner")
    await stack.enter_async_context(ToolRunner(settings))


def main() -> None:
    """Entry point of ``python -m dialtone_tools`` and the ``dialtone-tool-runner`` script."""
    runtime.run(serve)


if __name__ == "__main__":
    main()
