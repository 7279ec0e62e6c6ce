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


# Bus transit of one frame between the gateway and a bridge: a NATS hop is well under a millisecond
# on one host and a few across a network; the header's clock has millisecond resolution.
TRANSIT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
TRANSIT_SAMPLE = 10  # one audio frame in ten is timed (control frames always): 5 a second per call
