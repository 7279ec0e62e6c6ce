"""Start-up of the tool-runner (``python -m dialtone_tools``)."""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import AsyncExitStack

from dialtone_common import logs, runtime

from dialtone_tools.executor import sync_tools_running
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
    if stuck := sync_tools_running():
        # The pool's threads are joined at interpreter exit, so a hung sync tool would keep a stopped
        # runner alive forever. Every reply and connection is closed by now: leave without them.
        logging.getLogger(__name__).warning("exiting with %d sync tool calls still hung", stuck)
        logging.shutdown()
        os._exit(0)


if __name__ == "__main__":
    main()
