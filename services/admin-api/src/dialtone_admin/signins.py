"""The register of dashboard sign-ins, shared by every admin API instance and kept across restarts.

A session cookie is accepted only while its sign-in is in the register, a NATS KV bucket
(``dialtone_admin_signins``): signing out deletes its entry, and every instance drops it from its
own copy as soon as its watch of the bucket delivers the delete (milliseconds). An instance that
starts reads the bucket whole, so a restart forgets no sign-out; an entry outlives no session
(the bucket's TTL is the session's). Each instance keeps the bucket in memory, so checking a cookie
costs a dictionary look-up, not a round trip; a cookie that this instance has not seen yet (signed in
on another instance a moment ago) is looked up in the bucket once.

Keys are a digest of the cookie's nonce, never the nonce: what the bucket and the session list show
cannot be turned back into a cookie (which also needs the MAC under the admin token).

Open streams (live view, listen-in) hold a :class:`Held` sign-in and ask it on every event and at
least every :data:`CHECK_S` when idle, so a stream ends within about a second of its sign-out or
expiry, however busy it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from dialtone_proto import subjects
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BadRequestError, KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field, ValidationError

log = logging.getLogger(__name__)

BUCKET = subjects.ADMIN_SIGNINS_BUCKET
CHECK_S = 0.5  # an idle stream looks at its sign-in at least this often
RESYNC_S = 30.0  # the whole bucket is read again this often, in case a watch missed a delete
MAX_SIGNINS = 10_000


class SignInUnavailable(Exception):
    """The register (NATS) cannot be written now; the sign-in or sign-out did not happen."""


class SignInEntry(BaseModel):
    """One sign-in, as the session list shows it."""

    id: str = Field(description="the sign-in's id (a digest of its cookie's nonce, not the cookie)")
    issued_at: int = Field(description="when it signed in (Unix seconds)")
    expires_at: int = Field(description="when it ends (Unix seconds)")
    address: str = Field(description="the client address it signed in from")
    user_agent: str = Field(description="the browser it signed in with (first 200 characters)")


def signin_id(nonce: str) -> str:
    """The register's key for a cookie's nonce."""
    return hashlib.sha256(b"dialtone-signin\x00" + nonce.encode()).hexdigest()[:32]


class SignIns:
    """This instance's copy of the register, kept current by a watch of the bucket.

    Args:
        ttl_s: how long a sign-in lasts (the bucket's TTL).
        clock: wall clock (Unix seconds), replaceable in tests.
    """

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self._ttl_s, self._clock = ttl_s, clock
        self._kv: KeyValue | None = None
        self._active: dict[str, SignInEntry] = {}
        # Ids signed out (seen deleted), so a read racing the delete never brings one back; an id
        # is random and never reused, and an entry is kept as long as the sign-in could have lasted.
        self._gone: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._synced = asyncio.Event()

    async def start(self, nc: Client, replicas: int = 1) -> None:
        """Open (or create) the bucket, read it whole and keep watching it."""
        js = nc.jetstream()
        config = KeyValueConfig(
            bucket=BUCKET,
            description="Dialtone dashboard sign-ins (an entry per session cookie; deleted on sign-out)",
            history=1,
            ttl=self._ttl_s + 60,
            max_value_size=2048,
            storage=StorageType.FILE,
            replicas=replicas,
        )
        for attempt in range(20):
            try:
                try:
                    self._kv = await js.create_key_value(config)
                except BadRequestError:  # exists with other settings (another instance's TTL)
                    self._kv = await js.key_value(BUCKET)
                break
            except Exception as exc:  # JetStream may still be electing a leader right after start
                if attempt == 19:
                    raise
                log.info("waiting for JetStream (sign-ins bucket): %s", exc)
                await asyncio.sleep(0.25)
        await self._resync()
        self._tasks = [asyncio.create_task(self._watch()), asyncio.create_task(self._resync_often())]

    async def stop(self) -> None:
        # A cancellation that arrives while the watch is being set up (in nats-py's watchall) can be
        # lost: the task then went on into its watch loop and every quick start and stop waited out a
        # 2 s timeout (the admin API's tests, 2 s each). So the cancellation is repeated until each
        # task has ended, for 2 s at most.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        for task in self._tasks:
            while not task.done() and loop.time() < deadline:
                task.cancel()
                await asyncio.wait([task], timeout=0.05)
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: a task's failure as it stops is no news
        self._tasks.clear()

    # -- reading -----------------------------------------------------------------------------------

    def active(self, nonce: str) -> bool:
        """Whether the sign-in of a cookie with this nonce is in the register and not expired (local)."""
        entry = self._active.get(signin_id(nonce))
        return entry is not None and entry.expires_at > self._clock()

    async def check(self, nonce: str) -> bool:
        """:meth:`active`, asking the bucket about a sign-in this instance has not heard of yet."""
        if self.active(nonce):
            return True
        if self._kv is None:
            return False
        key = signin_id(nonce)
        try:
            entry = await asyncio.wait_for(self._kv.get(key), 2.0)
        except KeyNotFoundError:
            return False
        except Exception as exc:  # NATS away: what this instance knows is all there is
            log.warning("sign-ins bucket unreadable (%s); cookie refused", type(exc).__name__)
            return False
        if (signin := _parse(entry.value)) is None:
            return False
        self._remember(signin)
        return self.active(nonce)

    def list(self) -> list[SignInEntry]:
        """The sign-ins in force, newest first."""
        now = self._clock()
        return sorted((s for s in self._active.values() if s.expires_at > now), key=lambda s: -s.issued_at)

    # -- writing -----------------------------------------------------------------------------------

    async def add(self, nonce: str, expires_at: int, address: str, user_agent: str) -> None:
        """Register a new sign-in before its cookie is handed out."""
        signin = SignInEntry(
            id=signin_id(nonce), issued_at=int(self._clock()), expires_at=expires_at, address=address,
            user_agent=user_agent[:200],
        )  # fmt: skip
        await self._write(lambda kv: kv.put(signin.id, signin.model_dump_json().encode()))
        self._remember(signin)

    async def revoke(self, ident: str) -> bool:
        """End one sign-in everywhere (by its id); False if there was none."""
        known = ident in self._active
        self._forget(ident)
        await self._delete(ident)
        return known

    async def _delete(self, ident: str) -> None:
        await self._write(lambda kv: kv.delete(ident))

    async def revoke_all(self) -> int:
        """End every sign-in everywhere; how many were in force."""
        idents = set(self._active)
        if self._kv is not None:
            with contextlib.suppress(NoKeysError):
                idents |= set(await self._kv.keys())
        for ident in idents:
            self._forget(ident)
        for ident in sorted(idents):
            await self._delete(ident)
        return len(idents)

    async def _write(self, op: Callable[[KeyValue], Any]) -> None:
        if self._kv is None:
            raise SignInUnavailable("the sign-in register is not open")
        try:
            await asyncio.wait_for(op(self._kv), 3.0)
        except Exception as exc:
            raise SignInUnavailable(f"the sign-in register (NATS) is unavailable: {type(exc).__name__}") from exc

    # -- keeping the copy current ------------------------------------------------------------------

    def _forget(self, ident: str) -> None:
        self._active.pop(ident, None)
        now = self._clock()
        self._gone[ident] = now
        if len(self._gone) > MAX_SIGNINS:
            for old in [i for i, t in self._gone.items() if now - t > self._ttl_s + 60]:
                del self._gone[old]
            while len(self._gone) > MAX_SIGNINS:
                self._gone.pop(next(iter(self._gone)))

    def _remember(self, signin: SignInEntry) -> None:
        if signin.expires_at <= self._clock() or signin.id in self._gone:
            return
        self._active[signin.id] = signin
        if len(self._active) > MAX_SIGNINS:
            oldest = min(self._active.values(), key=lambda s: s.issued_at)
            self._active.pop(oldest.id, None)

    async def _watch(self) -> None:
        """Apply every change to the bucket as it happens; start again after any failure."""
        while True:
            try:
                assert self._kv is not None
                watcher = await self._kv.watchall(include_history=False)
                try:
                    async for entry in watcher:
                        if entry is None:
                            continue  # the end of the initial values
                        if entry.operation in ("DEL", "PURGE"):
                            self._forget(entry.key)
                        elif (signin := _parse(entry.value)) is not None:
                            self._remember(signin)
                finally:
                    with contextlib.suppress(Exception):
                        await watcher.stop()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("sign-ins watch ended (%s); watching again", type(exc).__name__)
            await asyncio.sleep(1.0)

    async def _resync(self) -> None:
        """Make the copy exactly the bucket: what a missed delete left behind goes."""
        assert self._kv is not None
        try:
            keys = set(await self._kv.keys())
        except NoKeysError:
            keys = set()
        fresh: dict[str, SignInEntry] = {}
        for key in keys:
            with contextlib.suppress(KeyNotFoundError):
                entry = await self._kv.get(key)
                signin = _parse(entry.value)
                if signin is not None and signin.expires_at > self._clock() and key not in self._gone:
                    fresh[key] = signin
        self._active = fresh

    async def _resync_often(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_S)
            try:
                await self._resync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("sign-ins resync failed (%s); keeping what this instance knows", type(exc).__name__)


class Held:
    """The sign-in an open stream was opened with: it stops the stream when the sign-in ends.

    Args:
        signins: the register.
        nonce: the cookie's nonce, or None for a stream opened with the bearer token (which ends
            only when the token changes, and with it the process's configuration).
        expires_at: the cookie's own expiry.
    """

    def __init__(self, signins: SignIns | None, nonce: str | None, expires_at: float | None) -> None:
        self._signins, self._nonce, self._expires_at = signins, nonce, expires_at

    def ended(self) -> bool:
        if self._nonce is None:
            return False
        if self._expires_at is not None and self._expires_at <= time.time():
            return True
        return self._signins is None or not self._signins.active(self._nonce)


def _parse(raw: bytes | None) -> SignInEntry | None:
    if not raw:
        return None
    try:
        return SignInEntry.model_validate_json(raw)
    except ValidationError:
        log.warning("ignoring a malformed entry in the sign-ins bucket")
        return None
