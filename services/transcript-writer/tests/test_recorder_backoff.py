"""The recorder's back-off between attempts to store a recording (or to sweep) after a failure."""

from __future__ import annotations

import pytest
from dialtone_writer.recorder import backoff_delay

pytestmark = pytest.mark.unit


def test_the_wait_doubles_up_to_its_cap_with_jitter_of_at_most_half() -> None:
    assert [backoff_delay(n, 1.0, 60.0, rand=1.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert [backoff_delay(n, 1.0, 60.0, rand=0.0) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff_delay(10_000, 1.0, 60.0, rand=1.0) == 60, "no overflow however long the outage"
    waits = {backoff_delay(3, 1.0, 60.0) for _ in range(200)}
    assert len(waits) > 100 and all(2.0 <= w <= 4.0 for w in waits), "writers that failed together spread out"
