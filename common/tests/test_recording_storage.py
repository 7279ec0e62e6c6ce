"""The recording store's boundary: whatever the backend raises (obstore's own exception classes, the
local disk's ``OSError``) leaves it as one ``RecordingStorageError``, sorted by kind, the original
kept as ``__cause__``; and the local directory is the service's alone (0700)."""

from __future__ import annotations

import os
from pathlib import Path

import obstore.exceptions
import pytest
from dialtone_common.embedded import free_port
from dialtone_common.recording_storage import (
    ERROR_KINDS,
    LocalStorage,
    RecordingMissing,
    RecordingStorageError,
    S3Storage,
    error_kind,
    private_dir,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("exc", "kind"), [
    (obstore.exceptions.GenericError("Generic S3 error: error sending request"), "unavailable"),
    (obstore.exceptions.JoinError("task failed"), "unavailable"),
    (obstore.exceptions.PermissionDeniedError("403 AccessDenied"), "denied"),
    (obstore.exceptions.UnauthenticatedError("401"), "denied"),
    (obstore.exceptions.InvalidPathError("bad"), "rejected"),
    (obstore.exceptions.NotSupportedError("no"), "rejected"),
    (obstore.exceptions.UnknownConfigurationKeyError("key"), "rejected"),
    (obstore.exceptions.PreconditionError("etag"), "rejected"),
    (obstore.exceptions.BaseError("new in a later obstore"), "other"),
    (FileNotFoundError("404: <Code>NoSuchBucket</Code>"), "bucket_missing"),
    (PermissionError(13, "Permission denied"), "denied"),
    (ConnectionRefusedError(111, "refused"), "unavailable"),
    (TimeoutError(), "unavailable"),
    (OSError(28, "No space left on device"), "disk"),
    (RuntimeError("?"), "other"),
])
def test_every_backend_error_has_a_kind(exc: BaseException, kind: str) -> None:
    assert error_kind(exc) == kind and kind in ERROR_KINDS


async def test_an_unreachable_s3_raises_our_error_with_obstores_as_its_cause(tmp_path: Path) -> None:
    # Nothing listens on the port: the connection is refused (no server involved).
    s3 = S3Storage("dialtone-recordings", endpoint=f"http://127.0.0.1:{free_port()}", access_key_id="k",
                   secret_access_key="s", max_retries=0, retry_timeout_s=1)
    (tmp_path / "r.wav").write_bytes(b"RIFF")
    for operation, call in (("put", s3.put_file("CAx.wav", tmp_path / "r.wav")), ("size", s3.size("CAx.wav")),
                            ("delete", s3.delete("CAx.wav"))):
        with pytest.raises(RecordingStorageError) as caught:
            await call
        err = caught.value
        assert err.operation == operation and err.kind == "unavailable" and not err.fatal
        assert isinstance(err.__cause__, obstore.exceptions.BaseError), repr(err.__cause__)
        assert "\n" not in str(err), "one line, not obstore's debug dump"
        assert isinstance(err, OSError), "callers written for OSError (the admin API's 503) still catch it"
    with pytest.raises(RecordingStorageError) as caught:
        _ = [c async for c in s3.stream("CAx.wav", 0, 10)]
    assert caught.value.operation == "stream"


async def test_local_disk_errors_are_ours_too_and_a_missing_recording_is_missing(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "recordings" / "store")
    with pytest.raises(RecordingStorageError) as caught:
        await store.put_file("CAx.wav", tmp_path / "no-such-spool.wav")
    assert caught.value.operation == "put" and caught.value.kind == "disk"
    assert isinstance(caught.value.__cause__, FileNotFoundError)
    (tmp_path / "recordings" / "store" / "CAdir.wav").mkdir()  # a directory where a file should be
    with pytest.raises(RecordingStorageError) as caught:
        await store.delete("CAdir.wav")
    assert caught.value.operation == "delete" and isinstance(caught.value.__cause__, OSError)
    with pytest.raises(RecordingMissing):
        await store.size("CAnone.wav")
    with pytest.raises(RecordingMissing):
        _ = [c async for c in store.stream("CAnone.wav", 0, 10)]
    await store.delete("CAnone.wav")  # deleting what is gone is fine
    with pytest.raises(ValueError, match="invalid recording key"):  # a caller's bug, not the store's
        await store.put_file("../x.wav", tmp_path / "no-such-spool.wav")


async def test_the_recordings_directory_and_its_new_parents_are_0700(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        (tmp_path / "r.wav").write_bytes(b"RIFF")
        store = LocalStorage(tmp_path / "data" / "recordings" / "store")
        await store.put_file("CAx.wav", tmp_path / "r.wav")
    finally:
        os.umask(old_umask)
    for directory in ("data", "data/recordings", "data/recordings/store"):
        assert (tmp_path / directory).stat().st_mode & 0o777 == 0o700, directory
    assert (tmp_path / "data/recordings/store/CAx.wav").stat().st_mode & 0o777 == 0o600


def test_private_dir_tightens_an_existing_directory(tmp_path: Path) -> None:
    loose = tmp_path / "recordings"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    private_dir(loose)
    assert loose.stat().st_mode & 0o777 == 0o700
    private_dir(loose)  # again: nothing to do, no error


def test_a_mount_point_not_ours_is_left_as_it_is_and_what_is_inside_is_private(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # A Kubernetes emptyDir with fsGroup: owned by root, group-writable; the service runs as another
    # user and may not chmod it (the tests run as whoever they run as: the refusal is simulated).
    mount = tmp_path / "recordings"
    mount.mkdir()
    os.chmod(mount, 0o2777)
    real_chmod = os.chmod

    def chmod(path, mode: int) -> None:  # type: ignore[no-untyped-def]
        if Path(path) == mount:
            raise PermissionError(1, "Operation not permitted", str(path))
        real_chmod(path, mode)

    monkeypatch.setattr(os, "chmod", chmod)
    private_dir(mount)  # no error: the writer still records
    assert "not this service's to change" in caplog.text
    private_dir(mount / "spool")
    assert (mount / "spool").stat().st_mode & 0o777 == 0o700
