"""The embedded servers keep the launcher's secrets out of their environment and their data private."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import psutil
import pytest
from dialtone_common.embedded import embedded_nats, embedded_postgres, server_env

pytestmark = pytest.mark.integration

SECRET = "sk-test-0123456789abcdef"


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _servers(besides: set[int]) -> list[psutil.Process]:
    """The servers this process started, other than ``besides`` (the test session's own). Only the
    postmaster, not its children: PostgreSQL writes their process titles over their environment."""
    return [p for p in psutil.Process().children()
            if p.name() in ("nats-server", "postgres") and p.pid not in besides]


@pytest.fixture
def launcher_secrets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The launcher's environment as the README tells a user to set it, plus a locale and a libpq variable."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", SECRET)
    monkeypatch.setenv("ADMIN_TOKEN", SECRET)
    monkeypatch.setenv("PGPASSWORD", SECRET)
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    yield


def test_server_env_keeps_only_path_locale_and_time_zone() -> None:
    env = server_env({"PATH": "/usr/bin", "LANG": "C.UTF-8", "LC_TIME": "C", "TZ": "UTC", "HOME": "/root",
                      "OPENAI_API_KEY": SECRET, "DATABASE_URL": "postgresql://u:pw@h/db", "PGHOST": "elsewhere"})
    assert env == {"PATH": "/usr/bin", "LANG": "C.UTF-8", "LC_TIME": "C", "TZ": "UTC"}


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_embedded_servers_do_not_inherit_the_launchers_secrets(tmp_path: Path, launcher_secrets: None) -> None:
    already = {p.pid for p in psutil.Process().children()}
    with embedded_nats(tmp_path / "nats") as nats_url, embedded_postgres(tmp_path / "pg") as dsn:
        servers = _servers(already)
        assert sorted(p.name() for p in servers) == ["nats-server", "postgres"]
        for proc in servers:
            env = _environ(proc.pid)
            leaked = [k for k, v in env.items() if SECRET in v]
            assert not leaked, f"{proc.name()} (pid {proc.pid}) inherited {leaked}"
            assert env.get("LC_ALL") == "C.UTF-8" and "PATH" in env

        async def use_both() -> None:  # and both still work without the rest of the environment
            nc = await nats.connect(nats_url)
            assert (await nc.jetstream().account_info()).limits is not None
            await nc.close()
            conn = await asyncpg.connect(dsn)
            assert await conn.fetchval("SELECT 1") == 1
            await conn.close()

        asyncio.run(use_both())
    for data in (tmp_path / "nats", tmp_path / "pg", tmp_path / "pg" / "pgdata"):
        assert stat.S_IMODE(data.stat().st_mode) == 0o700, data


def test_embedded_postgres_leaves_a_private_data_directory_private(tmp_path: Path) -> None:
    """``make run`` keeps the servers' data in ``.dialtone`` (0700). Run as root, PostgreSQL runs as
    a user of its own, yet neither ``.dialtone`` nor any directory above it is opened to others."""
    private = tmp_path / "dotdialtone"
    private.mkdir(mode=0o700)
    above = {p: stat.S_IMODE(p.stat().st_mode) for p in [tmp_path, *tmp_path.parents]}
    with embedded_postgres(private / "postgres") as dsn:
        async def query() -> int:
            conn = await asyncpg.connect(dsn)
            try:
                return await conn.fetchval("SELECT 1")
            finally:
                await conn.close()

        assert asyncio.run(query()) == 1
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        assert stat.S_IMODE((private / "postgres").stat().st_mode) == 0o700
        assert {p: stat.S_IMODE(p.stat().st_mode) for p in above} == above
