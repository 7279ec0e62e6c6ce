"""The shared runtime: the health/metrics server and the migration file rules."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from dialtone_common.db import migration_files
from dialtone_common.health import HealthServer
from dialtone_common.metrics import service_registry
from prometheus_client import Counter

pytestmark = pytest.mark.unit


async def _get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split(" ")[1]), body


async def test_health_server_reports_health_and_metrics() -> None:
    problem: list[str] = []
    registry = service_registry()
    Counter("dialtone_test_served_total", "only in this registry", registry=registry).inc(3)
    async with HealthServer("127.0.0.1", 0, lambda: problem[0] if problem else None, registry=registry) as server:
        assert await _get(server.port, "/healthz") == (200, "ok\n")
        problem.append("nats disconnected")
        assert await _get(server.port, "/healthz") == (503, "nats disconnected\n")
        status, body = await _get(server.port, "/metrics")
        assert status == 200 and "python_info" in body
        assert "dialtone_test_served_total 3.0" in body  # the service's own registry, not the global one
        assert "process_resident_memory_bytes" in body and "process_open_fds" in body
        assert (await _get(server.port, "/nope"))[0] == 404


def test_migrations_must_be_numbered_without_gaps(tmp_path: Path) -> None:
    (tmp_path / "0001_init.sql").write_text("select 1")
    (tmp_path / "0003_later.sql").write_text("select 1")
    (tmp_path / "README.md").write_text("not a migration")
    with pytest.raises(RuntimeError, match="without gaps"):
        migration_files(tmp_path)
    (tmp_path / "0002_middle.sql").write_text("select 1")
    assert [n for n, _ in migration_files(tmp_path)] == [1, 2, 3]
