"""GET /sessions/{id}/recording (Range) and /waveform, with the admin app and a local store."""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest
from dialtone_admin.app import create_app
from dialtone_admin.recordings import parse_range
from dialtone_admin.settings import AdminSettings
from dialtone_common.recording_storage import LocalStorage

pytestmark = pytest.mark.integration

TOKEN = "test-admin-token-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WAV = bytes(range(256)) * 40  # 10240 bytes standing for a WAV file


@pytest.fixture
async def recorded(database_url: str, nats_url: str, tmp_path: Path):
    """A client of the admin app, and the call id of a stored recording."""
    call_sid = "CA" + uuid.uuid4().hex
    source = tmp_path / "r.wav"
    source.write_bytes(WAV)
    await LocalStorage(tmp_path / "recordings" / "store").put_file(f"{call_sid}.wav", source)
    conn = await asyncpg.connect(database_url)
    peaks = {"caller": [i / 100 for i in range(100)], "agent": [0.0] * 99 + [0.5]}
    await conn.execute(
        "INSERT INTO call_recordings (call_sid, storage_key, bytes, duration_ms, complete, reason, bucket_samples, peaks)"
        " VALUES ($1, $2, $3, 1000, false, 'lost a second', 80, $4::jsonb)",
        call_sid, f"{call_sid}.wav", len(WAV), orjson.dumps(peaks).decode(),
    )
    await conn.close()
    app = create_app(AdminSettings(database_url=database_url, nats_url=nats_url, admin_token=TOKEN,
                                   recordings_dir=tmp_path / "recordings"))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin") as client:
            yield client, call_sid


async def test_the_recording_streams_whole_and_by_range(recorded) -> None:
    client, sid = recorded
    r = await client.get(f"/sessions/{sid}/recording", headers=AUTH)
    assert r.status_code == 200 and r.content == WAV
    assert r.headers["content-type"] == "audio/wav" and r.headers["accept-ranges"] == "bytes"
    assert r.headers["content-length"] == str(len(WAV))
    for header, start, end in (("bytes=0-99", 0, 100), ("bytes=10000-", 10000, len(WAV)),
                               ("bytes=-40", len(WAV) - 40, len(WAV)), ("bytes=10200-99999", 10200, len(WAV))):
        r = await client.get(f"/sessions/{sid}/recording", headers=AUTH | {"Range": header})
        assert r.status_code == 206, header
        assert r.content == WAV[start:end], header
        assert r.headers["content-range"] == f"bytes {start}-{end - 1}/{len(WAV)}"
    for bad in ("bytes=10240-", "bytes=5-2", "bytes=-0", "bytes=0-1,5-6", "items=0-1", "bytes=", "bytes=x-y"):
        r = await client.get(f"/sessions/{sid}/recording", headers=AUTH | {"Range": bad})
        assert r.status_code == 416, bad
        assert r.headers["content-range"] == f"bytes */{len(WAV)}"


async def test_no_token_no_recording_and_no_500(recorded) -> None:
    client, sid = recorded
    assert (await client.get(f"/sessions/{sid}/recording")).status_code == 401
    assert (await client.get(f"/sessions/{sid}/waveform")).status_code == 401
    assert (await client.get("/sessions/CAnothere/recording", headers=AUTH)).status_code == 404
    assert (await client.get("/sessions/CAnothere/waveform", headers=AUTH)).status_code == 404
    for points in ("0", "1001", "-1", "x", "1e9"):
        r = await client.get(f"/sessions/{sid}/waveform", params={"points": points}, headers=AUTH)
        assert r.status_code in (400, 422), points
    r = await client.get("/sessions/%00/recording", headers=AUTH)
    assert r.status_code < 500


async def test_the_waveform_gives_peaks_per_channel(recorded) -> None:
    client, sid = recorded
    r = await client.get(f"/sessions/{sid}/waveform", params={"points": 10}, headers=AUTH)
    assert r.status_code == 200
    body = r.json()
    assert body["points"] == 10 and len(body["caller"]) == len(body["agent"]) == 10
    assert body["caller"] == [(10 * i + 9) / 100 for i in range(10)]  # the largest of each slice
    assert body["agent"] == [0.0] * 9 + [0.5]
    assert body["complete"] is False and body["reason"] == "lost a second" and body["duration_ms"] == 1000
    r = await client.get(f"/sessions/{sid}/waveform", params={"points": 1000}, headers=AUTH)
    assert r.json()["points"] == 100  # no more points than were measured


@pytest.mark.unit
def test_range_parsing() -> None:
    assert parse_range(None, 10) is None
    assert parse_range("bytes=0-0", 10) == (0, 1)
    assert parse_range("bytes=-20", 10) == (0, 10)
    with pytest.raises(ValueError):
        parse_range("bytes=10-", 10)
