"""Shared settings: what a service exposes when nothing is configured."""

from __future__ import annotations

import asyncio
import socket

import psutil
import pytest
from dialtone_common.health import HealthServer
from dialtone_common.metrics import service_registry
from dialtone_common.settings import ServiceSettings

pytestmark = pytest.mark.unit


def _outside_address() -> str:
    """An IPv4 address of this machine other than loopback: how another host would reach it."""
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family == socket.AF_INET and not addr.address.startswith("127."):
                return addr.address
    pytest.skip("this machine has no IPv4 address besides loopback")


async def _reachable(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    writer.close()
    return True


async def test_metrics_listen_on_loopback_only_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    outside = _outside_address()
    monkeypatch.delenv("METRICS_HOST", raising=False)
    async with HealthServer(ServiceSettings().metrics_host, 0, registry=service_registry()) as server:
        assert await _reachable("127.0.0.1", server.port)
        assert not await _reachable(outside, server.port)

    monkeypatch.setenv("METRICS_HOST", "0.0.0.0")
    async with HealthServer(ServiceSettings().metrics_host, 0, registry=service_registry()) as server:
        assert await _reachable(outside, server.port)
