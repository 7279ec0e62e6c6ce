"""Throttling of admin-token guesses: wrong tokens at sign-in and as a bearer token.

Two sliding windows of :data:`WINDOW_S`:

- **Per client address**: after :data:`PER_ADDRESS` wrong tokens from one address in the window,
  that address gets 429 (with ``Retry-After``) for anything that presents a token, the right one
  included, until its oldest failure leaves the window.
- **Globally**: after :data:`GLOBAL` wrong tokens from all addresses together (guessing spread over
  many addresses), every address that has itself failed in the window is refused too. An address
  with no failure is never refused, so the operator's own browser keeps working while guessers are
  held off: the global limit cannot be turned into a lock-out of everyone.

Failures are logged with the address and the way the token came (never the token), and counted in
``dialtone_admin_auth_failures_total``; refusals in ``dialtone_admin_auth_throttled_total``. The
windows are per instance: with N instances behind a balancer a guesser gets at most N times the
rate, which a 32-character random token makes moot; the metric and its alert see all of them.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from dialtone_admin.metrics import AUTH_FAILURES, AUTH_THROTTLED

log = logging.getLogger(__name__)

WINDOW_S = 60.0
PER_ADDRESS = 10  # wrong tokens from one address per window
GLOBAL = 100  # wrong tokens from all addresses per window
MAX_ADDRESSES = 10_000  # addresses remembered (the oldest forgotten first)


class Guard:
    """Counts wrong tokens and says who must wait.

    Args:
        per_address: failures one address may have in the window.
        global_limit: failures all addresses together may have in the window.
        window_s: the window, in seconds.
        clock: monotonic clock, replaceable in tests.
    """

    def __init__(
        self,
        per_address: int = PER_ADDRESS,
        global_limit: int = GLOBAL,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_address, self.global_limit, self.window_s = per_address, global_limit, window_s
        self._clock = clock
        self._by_address: OrderedDict[str, deque[float]] = OrderedDict()
        self._all: deque[float] = deque()

    def _trim(self, times: deque[float], now: float) -> None:
        while times and now - times[0] >= self.window_s:
            times.popleft()

    def retry_after(self, address: str) -> int:
        """Seconds the address must wait before presenting a token again; 0 when it may now."""
        now = self._clock()
        self._trim(self._all, now)
        mine = self._by_address.get(address)
        if mine is None:
            return 0
        self._trim(mine, now)
        if not mine:
            del self._by_address[address]
            return 0
        wait, scope = 0.0, "address"
        if len(mine) >= self.per_address:
            wait = mine[-self.per_address] + self.window_s - now
        if len(self._all) >= self.global_limit:
            global_wait = self._all[-self.global_limit] + self.window_s - now
            if global_wait > wait:
                wait, scope = global_wait, "global"
        if wait <= 0:
            return 0
        AUTH_THROTTLED.labels(scope).inc()
        return max(1, math.ceil(wait))

    def failed(self, address: str, via: str) -> None:
        """Note a wrong token from ``address`` (``via``: sign_in or bearer)."""
        now = self._clock()
        mine = self._by_address.pop(address, None) or deque(maxlen=self.per_address)
        mine.append(now)
        self._by_address[address] = mine  # most recent last, so the oldest is forgotten first
        while len(self._by_address) > MAX_ADDRESSES:
            self._by_address.popitem(last=False)
        self._all.append(now)
        self._trim(self._all, now)
        while len(self._all) > self.global_limit:
            self._all.popleft()
        AUTH_FAILURES.labels(via).inc()
        log.warning("wrong admin token from %s (%s); %d from it in the last %.0f s", address, via, len(mine), self.window_s)
