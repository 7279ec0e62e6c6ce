"""Fixtures of the admin API's tests: a PostgreSQL of the tests' own that they can stop, start
again and freeze."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from dialtone_common.embedded import embedded_postgres, free_port
from dialtone_writer.migrations import apply_migrations


class ControlledPostgres:
    """An embedded PostgreSQL that a test stops, starts again (same port, same data) and freezes.

    Args:
        data_dir: where its data and log live.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir, self.port = data_dir, free_port()
        self.url = ""
        self._server: contextlib.ExitStack | None = None
        self._frozen: list[psutil.Process] = []

    def start(self) -> str:
        """Start the server (on the same port and data dir as before, if it ran before)."""
        assert self._server is None, "already running"
        stack = contextlib.ExitStack()
        self.url = stack.enter_context(embedded_postgres(self.data_dir, port=self.port))
        self._server = stack
        return self.url

    def stop(self) -> None:
        """Stop the server the way an operator does (fast shutdown: clients are cut off)."""
        if self._server is None:
            return
        self.thaw()
        postmaster = self._postmaster()
        # Not SIGTERM (what the context manager sends): that "smart" shutdown waits for every client.
        postmaster.send_signal(signal.SIGINT)
        postmaster.wait(30)
        self._server.close()
        self._server = None

    def freeze(self) -> None:
        """SIGSTOP the postmaster, then every backend and helper under it: sockets stay open, nothing answers."""
        postmaster = self._postmaster()
        postmaster.suspend()  # first, so that it forks no new backend while we stop the others
        self._frozen = [postmaster, *postmaster.children(recursive=True)]
        for process in self._frozen[1:]:
            process.suspend()

    def thaw(self) -> None:
        """SIGCONT what ``freeze`` stopped."""
        for process in reversed(self._frozen):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.resume()
        self._frozen = []

    def _postmaster(self) -> psutil.Process:
        # postmaster.pid: the first line is the postmaster's pid.
        pid = int((self.data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
        return psutil.Process(pid)


@pytest.fixture(scope="module")
def controlled_postgres(tmp_root: Path) -> Iterator[ControlledPostgres]:
    """A migrated PostgreSQL of this module's own, running; left running after each test."""
    pg = ControlledPostgres(tmp_root / f"admin-pg-{uuid.uuid4().hex[:8]}")
    asyncio.run(apply_migrations(pg.start()))
    try:
        yield pg
    finally:
        pg.stop()
