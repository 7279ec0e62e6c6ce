"""The one shape of every service's ``main()``: a stop Event set by SIGINT/SIGTERM, an
``AsyncExitStack`` that owns connections and servers, and an orderly drain on the way out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

log = logging.getLogger(__name__)


def run(main: Callable[[AsyncExitStack, asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stack, stop)`` until a signal sets ``stop``; then close the stack in reverse."""

    async def _runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        async with AsyncExitStack() as stack:
            await main(stack, stop)
            await stop.wait()
            log.info("stopping")

    with contextlib.suppress(KeyboardInterrupt):
        try:
            import uvloop  # a faster event loop: most of a service's CPU is loop and socket work
        except ImportError:
            asyncio.run(_runner())
        else:
            uvloop.run(_runner())
