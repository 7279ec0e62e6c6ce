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

    RecordingMissing   no object under that key
    OSError            anything else the store raised (unreachable, refused, ...)
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from pydantic import Field, SecretStr

from dialtone_common.settings import ServiceSettings

CHUNK = 64 * 1024


class RecordingMissing(LookupError):
    """No recording is stored under the key."""


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
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

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

        await asyncio.to_thread(put)

    async def size(self, key: str) -> int:
        try:
            return (await asyncio.to_thread(self._path(key).stat)).st_size
        except FileNotFoundError as exc:
            raise RecordingMissing(key) from exc

    async def stream(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` (exclusive), in chunks."""
        try:
            f = await asyncio.to_thread(open, self._path(key), "rb")
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
        try:
            await asyncio.to_thread(self._path(key).unlink)
        except FileNotFoundError:
            pass

    def describe(self) -> str:
        return f"local directory {self.root}"


class S3Storage:
    """Recordings as objects in an S3-compatible bucket, through obstore."""

    def __init__(self, bucket: str, *, endpoint: str | None = None, region: str = "us-east-1",
                 prefix: str = "", access_key_id: str | None = None, secret_access_key: str | None = None) -> None:
        from obstore.store import S3Store  # only a deployment that uses S3 loads it

        config: dict[str, object] = {"region": region}
        if endpoint:
            config["endpoint"] = endpoint
        if access_key_id and secret_access_key:
            config["access_key_id"] = access_key_id
            config["secret_access_key"] = secret_access_key
        client = {"allow_http": True} if endpoint and endpoint.startswith("http://") else None
        self._store = S3Store(bucket, config=config, client_options=client)  # type: ignore[arg-type]
        self.bucket, self.endpoint, self.prefix = bucket, endpoint, prefix

    def _key(self, key: str) -> str:
        return self.prefix + _check_key(key)

    async def put_file(self, key: str, path: Path) -> None:
        import obstore

        await obstore.put_async(self._store, self._key(key), Path(path), chunk_size=8 * 1024 * 1024)

    async def size(self, key: str) -> int:
        import obstore

        try:
            meta = await obstore.head_async(self._store, self._key(key))
        except FileNotFoundError as exc:
            raise RecordingMissing(key) from exc
        return int(meta["size"])

    async def stream(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        import obstore

        if end <= start:
            return
        try:
            result = await obstore.get_async(self._store, self._key(key), options={"range": (start, end)})
        except FileNotFoundError as exc:
            raise RecordingMissing(key) from exc
        async for chunk in result.stream(min_chunk_size=CHUNK):
            yield bytes(chunk)

    async def delete(self, key: str) -> None:
        import obstore

        try:
            await obstore.delete_async(self._store, self._key(key))
        except FileNotFoundError:
            pass

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
        )
    return LocalStorage(settings.recordings_dir / "store")
