"""One Prometheus registry per service.

Each service keeps its metrics in its own :class:`CollectorRegistry` (never the library's global
default), so a test process that imports several services, or a library that registers metrics of
its own, cannot mix them into a service's ``/metrics``. Every registry carries the process
collector (CPU seconds, resident memory, open file descriptors) and the Python platform info.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector


def service_registry() -> CollectorRegistry:
    """A fresh registry with the process and platform collectors in it."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry
