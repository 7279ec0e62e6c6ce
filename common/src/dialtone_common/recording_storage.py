"""Where call recordings are kept: a local directory (the embedded default) or an S3-compatible
bucket (production), behind one small async interface.

The transcript-writer's recorder puts a finished WAV file; the admin API streams byte ranges of it;
the writer's retention sweep deletes it. Both services build their store from the same settings
(``RecordingStorageSettings``, mixed into each service's own settings class), so they always agree
on where a recording is.

S3 goes through ``obstore`` (the Rust ``object_store`` crate): streaming multipart uploads, ranged
GETs, its own retries. Credentials come from ``RECORDINGS_S3_ACCESS_KEY_ID`` /
``RECORDINGS_S3_SECRET_ACCESS_KEY`` when set, else from the usual ``AWS_*`` environment (or the
instance's role); they are never logged, and ``describe()`` leaves them out.

Errors::

    RecordingMissing       no object under that key
    RecordingStorageError  anything else the store raised (unreachable, refused, denied, disk full,
                           bucket missing, ...), whatever the backend: obstore's own exception
                           classes and the local disk's ``OSError`` never leave this module. The
                           backend's error is its ``__cause__``; ``kind`` sorts it for metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Protocol

from pydantic import Field, SecretStr

from dialtone_common.settings import ServiceSettings

log = logging.getLogger(__name__)

CHUNK = 64 * 1024


class RecordingMissing(LookupError):
    """No recording is stored under the key."""


OPERATIONS = ("put", "size", "stream", "delete")
# What went wrong, in a few words fit for a metric label:
#   unavailable     the store did not answer, or answered 5xx (an outage, a network fault, a timeout)
#   denied          credentials refused or lacking (S3 403/401, a local PermissionError)
#   bucket_missing  the bucket does not exist
#   rejected        the store refused the request as such (invalid path, unsupported, bad config)
#   disk            the local disk failed (full, read-only, I/O error)
#   other           anything else
ERROR_KINDS = ("unavailable", "denied", "bucket_missing", "rejected", "disk", "other")
# Kinds no retry by itself will cure: an operator must act (fix the credentials, the bucket policy,
# the configuration). Callers still retry them (the operator may fix it while the spool waits) but
# say so loudly.
FATAL_KINDS = frozenset({"denied", "bucket_missing", "rejected"})


class RecordingStorageError(OSError):
    """The store failed an operation; its own exception is ``__cause__``.

    An ``OSError``, so callers written when the store raised plain ``OSError`` (the admin API's
    503) still hold; but every backend error arrives as this one class.

    Attributes:
        operation: one of ``OPERATIONS``.
        kind: one of ``ERROR_KINDS``.
    """

    def __init__(self, operation: str, kind: str, message: str) -> None:
        super().__init__(f"recording store {operation} failed ({kind}): {message}")
        self.operation, self.kind = operation, kind

    @property
    def fatal(self) -> bool:
        """Whether an operator must act before a retry can succeed (``FATAL_KINDS``)."""
        return self.kind in FATAL_KINDS


_OBSTORE_KINDS = {
    "GenericError": "unavailable",  # obstore's catch-all: connection refused, 5xx after its retries, ...
    "JoinError": "unavailable",
    "PermissionDeniedError": "denied",
    "UnauthenticatedError": "denied",
    "InvalidPathError": "rejected",
    "NotSupportedError": "rejected",
    "UnknownConfigurationKeyError": "rejected",
    "PreconditionError": "rejected",
    "AlreadyExistsError": "rejected",
    "NotModifiedError": "rejected",
}


def _no_bucket(exc: BaseException) -> bool:
    """Whether a not-found from S3 is about the bucket (``NoSuchBucket``), not the object."""
    return "NoSuchBucket" in str(exc)


def error_kind(exc: BaseException) -> str:
    """The ``ERROR_KINDS`` entry of a backend's exception (obstore's or the local disk's)."""
    if type(exc).__module__.startswith("obstore"):
        return _OBSTORE_KINDS.get(type(exc).__name__, "other")
    if isinstance(exc, FileNotFoundError) and _no_bucket(exc):
        return "bucket_missing"
    if isinstance(exc, PermissionError):
        return "denied"
    if isinstance(exc, TimeoutError | ConnectionError):
        return "unavailable"
    if isinstance(exc, OSError):
        return "disk"
    if isinstance(exc, ValueError):
        return "rejected"
    return "other"


@contextlib.contextmanager
def _storage_errors(operation: str) -> Iterator[None]:
    """Turn whatever the backend raises into ``RecordingStorageError`` (``RecordingMissing`` passes)."""
    try:
        yield
    except (RecordingMissing, RecordingStorageError):
        raise
    except Exception as exc:
        # obstore's messages run over many lines (a debug dump); the first says what happened.
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise RecordingStorageError(operation, error_kind(exc), f"{type(exc).__name__}: {first}") from exc


def private_dir(path: Path) -> Path:
    """Create ``path``, and each missing parent, with mode 0700; tighten ``path`` to 0700 if it exists.

    (``Path.mkdir(mode=..., parents=True)`` gives the parents it creates the default mode, 0755
    under the usual umask, whatever ``mode`` says.) A directory this process may not change (a
    volume's mount point owned by root, as a Kubernetes ``emptyDir`` with ``fsGroup`` is) is left
    as it is, with a warning: what the service creates inside it is 0700 all the same.
    """
    path = Path(path)
    missing: list[Path] = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)
    if path.stat().st_mode & 0o777 != 0o700:
        try:
            os.chmod(path, 0o700)
        except PermissionError:
            log.warning("%s is not this service's to change (mode %o); what it keeps inside is 0700",
                        path, path.stat().st_mode & 0o777)
    return path


class RecordingStorageSettings(ServiceSettings):
    """Where recordings are stored; shared by the transcript-writer and the admin API."""

    recordings_dir: Path = Field(
        default=Path(".dialtone/recordings"),
        description="local directory of recordings (mode 0700, files 0600), and the recorder's spool of "
        "calls in progress even when recordings go to S3",
    )
    recordings_s3_bucket: str | None = Field(
        default=None, description="S3-compatible bucket of recordings; unset: the local directory"
    )
    recordings_s3_endpoint: str | None = Field(
        default=None, description="S3 endpoint URL (MinIO, SeaweedFS, R2, ...); unset: AWS's for the region"
    )
    recordings_s3_region: str = Field(default="us-east-1", description="S3 region")
    recordings_s3_prefix: str = Field(default="recordings/", description="key prefix of recordings in the bucket")
    recordings_s3_access_key_id: SecretStr | None = Field(
        default=None, description="S3 access key id; unset: AWS_ACCESS_KEY_ID or the instance's role"
    )
    recordings_s3_secret_access_key: SecretStr | None = Field(
        default=None, description="S3 secret key; unset: AWS_SECRET_ACCESS_KEY or the instance's role"
    )
    recordings_s3_max_retries: int = Field(
        default=10, ge=0, description="retries of one S3 request by the S3 client itself, before it reports an "
        "error (the recorder then retries the whole upload with its own back-off, without end)",
    )
    recordings_s3_retry_timeout_s: float = Field(
        default=180.0, gt=0, description="longest time the S3 client retries one request before it reports an error",
    )


class RecordingStorage(Protocol):
    async def put_file(self, key: str, path: Path) -> None: ...
    async def size(self, key: str) -> int: ...
    def stream(self, key: str, start: int, end: int) -> AsyncIterator[bytes]: ...
    async def delete(self, key: str) -> None: ...
    def describe(self) -> str: ...


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or ".." in key.split("/") or "\\" in key or "\0" in key:
        raise ValueError(f"invalid recording key {key!r}")
    return key


class LocalStorage:
    """Recordings as files under ``root`` (created 0700; each file 0600)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def _ensure(self, path: Path) -> None:
        private_dir(self.root)
        if path.parent != self.root:
            private_dir(path.parent)

    async def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)

        def put() -> None:
            self._ensure(target)
            tmp = target.with_name(target.name + ".part")
            with open(path, "rb") as src, open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK * 16)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, target)

        with _storage_errors("put"):
            await asyncio.to_thread(put)

    async def size(self, key: str) -> int:
        path = self._path(key)
        with _storage_errors("size"):
            try:
                return (await asyncio.to_thread(path.stat)).st_size
            except FileNotFoundError as exc:
                raise RecordingMissing(key) from exc

    async def stream(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` (exclusive), in chunks."""
        path = self._path(key)
        with _storage_errors("stream"):
            try:
                f = await asyncio.to_thread(open, path, "rb")
            except FileNotFoundError as exc:
                raise RecordingMissing(key) from exc
            try:
                await asyncio.to_thread(f.seek, start)
                left = end - start
                while left > 0:
                    data = await asyncio.to_thread(f.read, min(CHUNK, left))
                    if not data:
                        break
                    left -= len(data)
                    yield data
            finally:
                f.close()

    async def delete(self, key: str) -> None:
        path = self._path(key)
        with _storage_errors("delete"):
            try:
                await asyncio.to_thread(path.unlink)
            except FileNotFoundError:
                pass

    def describe(self) -> str:
        return f"local directory {self.root}"


class S3Storage:
    """Recordings as objects in an S3-compatible bucket, through obstore."""

    def __init__(self, bucket: str, *, endpoint: str | None = None, region: str = "us-east-1",
                 prefix: str = "", access_key_id: str | None = None, secret_access_key: str | None = None,
                 max_retries: int = 10, retry_timeout_s: float = 180.0) -> None:
        from obstore.store import S3Store  # only a deployment that uses S3 loads it

        config: dict[str, object] = {"region": region}
        if endpoint:
            config["endpoint"] = endpoint
        if access_key_id and secret_access_key:
            config["access_key_id"] = access_key_id
            config["secret_access_key"] = secret_access_key
        client = {"allow_http": True} if endpoint and endpoint.startswith("http://") else None
        # The client's own retries of one request (obstore's defaults: 10 retries within 3 minutes).
        retry = {"max_retries": max_retries, "retry_timeout": timedelta(seconds=retry_timeout_s)}
        self._store = S3Store(bucket, config=config, client_options=client, retry_config=retry)  # type: ignore[arg-type]
        self.bucket, self.endpoint, self.prefix = bucket, endpoint, prefix

    def _key(self, key: str) -> str:
        return self.prefix + _check_key(key)

    async def put_file(self, key: str, path: Path) -> None:
        import obstore

        name = self._key(key)
        with _storage_errors("put"):
            await obstore.put_async(self._store, name, Path(path), chunk_size=8 * 1024 * 1024)

    async def size(self, key: str) -> int:
        import obstore

        name = self._key(key)
        with _storage_errors("size"):
            try:
                meta = await obstore.head_async(self._store, name)
            except FileNotFoundError as exc:
                if _no_bucket(exc):
                    raise
                raise RecordingMissing(key) from exc
            return int(meta["size"])

    async def stream(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        import obstore

        name = self._key(key)
        if end <= start:
            return
        with _storage_errors("stream"):
            try:
                result = await obstore.get_async(self._store, name, options={"range": (start, end)})
            except FileNotFoundError as exc:
                if _no_bucket(exc):
                    raise
                raise RecordingMissing(key) from exc
            async for chunk in result.stream(min_chunk_size=CHUNK):
                yield bytes(chunk)

    async def delete(self, key: str) -> None:
        import obstore

        name = self._key(key)
        with _storage_errors("delete"):
            try:
                await obstore.delete_async(self._store, name)
            except FileNotFoundError as exc:
                # S3 deletes a missing object without complaint; a not-found is the bucket's, and
                # taking it for "already deleted" would drop the row and strand the object.
                if _no_bucket(exc):
                    raise

    def describe(self) -> str:
        return f"S3 bucket {self.bucket}" + (f" at {self.endpoint}" if self.endpoint else "")


def open_storage(settings: RecordingStorageSettings) -> LocalStorage | S3Storage:
    """The store the settings name: S3 when a bucket is set, else the local directory."""
    if settings.recordings_s3_bucket:
        key_id, secret = settings.recordings_s3_access_key_id, settings.recordings_s3_secret_access_key
        return S3Storage(
            settings.recordings_s3_bucket,
            endpoint=settings.recordings_s3_endpoint,
            region=settings.recordings_s3_region,
            prefix=settings.recordings_s3_prefix,
            access_key_id=key_id.get_secret_value() if key_id else None,
            secret_access_key=secret.get_secret_value() if secret else None,
            max_retries=settings.recordings_s3_max_retries,
            retry_timeout_s=settings.recordings_s3_retry_timeout_s,
        )
    return LocalStorage(settings.recordings_dir / "store")
