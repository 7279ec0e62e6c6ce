"""Call recordings: the WAV (with Range requests) and its waveform.

``GET /sessions/{call_sid}/recording`` streams the stereo WAV (caller left, agent as played right)
from the store the transcript-writer put it in (``RecordingStorageSettings``: a local directory or
an S3-compatible bucket). It honours one ``Range: bytes=...`` (206 with ``Content-Range``; 416 when
the range cannot be served) and always says ``Accept-Ranges: bytes``.

``GET /sessions/{call_sid}/waveform?points=N`` gives peaks per channel (0..1, the largest absolute
sample of each of ``N`` equal slices), from the peaks the writer measured when it stored the file,
so no audio is read.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any

import orjson
from dialtone_common.recording_storage import LocalStorage, RecordingMissing, S3Storage, open_storage
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import Response, StreamingResponse

from dialtone_admin.audit import record
from dialtone_admin.auth import require_token
from dialtone_admin.database import Database
from dialtone_admin.errors import responses
from dialtone_admin.params import Text

log = logging.getLogger(__name__)

router = APIRouter(dependencies=[Depends(require_token)], tags=["recordings"])

MAX_POINTS = 1000
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")

_ROW = """
SELECT storage_key, bytes, duration_ms, complete, reason, bucket_samples, peaks, sample_rate, channels, created_at
FROM call_recordings WHERE call_sid = $1
"""


async def _db(request: Request) -> Database:
    return request.app.state.db


def _storage(request: Request) -> LocalStorage | S3Storage:
    state = request.app.state
    store = getattr(state, "recording_storage", None)
    if store is None:
        store = state.recording_storage = open_storage(state.settings)
    return store


async def _row(db: Database, call_sid: str) -> Any:
    async with db.connection() as conn:
        row = await conn.fetchrow(_ROW, call_sid)
    if row is None:
        raise HTTPException(404, detail=f"no recording of {call_sid!r}")
    return row


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one byte range ``header`` asks for, as ``(start, end)`` with ``end`` exclusive; None for
    the whole file (no header). Raises ``ValueError`` for a range that cannot be served."""
    if header is None:
        return None
    match = _RANGE.match(header.strip())
    if not match or (not match[1] and not match[2]):
        raise ValueError("only one range, bytes=start-end, bytes=start- or bytes=-suffix")
    if not match[1]:  # the last N bytes
        suffix = int(match[2])
        if suffix == 0 or size == 0:
            raise ValueError("empty suffix range")
        return max(0, size - suffix), size
    start = int(match[1])
    end = int(match[2]) + 1 if match[2] else size
    if start >= size or end <= start:
        raise ValueError("range outside the file")
    return start, min(end, size)


@router.get(
    "/sessions/{call_sid}/recording",
    responses={**responses(400, 401, 404, 503),
               200: {"content": {"audio/wav": {}}, "description": "the WAV"},
               206: {"content": {"audio/wav": {}}, "description": "the range asked for"},
               416: {"description": "the range cannot be served"}},
    response_class=Response,
)
async def recording(
    request: Request, call_sid: Annotated[Text, Path()], db: Annotated[Database, Depends(_db)]
) -> Response:
    """The call's recording: stereo 16-bit PCM WAV at 8 kHz, caller left, agent (as played) right."""
    row = await _row(db, call_sid)
    await record(request, "play_recording", call_sid, {"range": request.headers.get("range", "")[:100] or None})
    store = _storage(request)
    try:
        size = await store.size(row["storage_key"])
    except RecordingMissing as exc:
        raise HTTPException(404, detail=f"the recording of {call_sid!r} is no longer stored") from exc
    except OSError as exc:
        log.warning("recording store unavailable: %s", exc)
        raise HTTPException(503, detail="recording store unavailable", headers={"Retry-After": "5"}) from exc
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "private, no-store",
               "Content-Disposition": f'inline; filename="{call_sid}.wav"'}
    try:
        wanted = parse_range(request.headers.get("range"), size)
    except ValueError:
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    start, end = wanted or (0, size)
    stream = store.stream(row["storage_key"], start, end)
    headers["Content-Length"] = str(end - start)
    if wanted is None:
        return StreamingResponse(stream, 200, headers=headers, media_type="audio/wav")
    headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    return StreamingResponse(stream, 206, headers=headers, media_type="audio/wav")


@router.get("/sessions/{call_sid}/waveform", responses=responses(400, 401, 404, 503))
async def waveform(
    call_sid: Annotated[Text, Path()],
    db: Annotated[Database, Depends(_db)],
    points: Annotated[int, Query(ge=1, le=MAX_POINTS, description="slices per channel")] = 200,
) -> dict:
    """Peaks per channel: for each of ``points`` equal slices of the call, the largest absolute
    sample (0..1) of the caller and of the agent; fewer when the call is shorter than
    ``points`` x 10 ms. ``complete`` false and ``reason`` say when audio is missing."""
    row = await _row(db, call_sid)
    peaks = row["peaks"]
    if isinstance(peaks, str | bytes):
        peaks = orjson.loads(peaks)
    caller, agent = list(peaks.get("caller", [])), list(peaks.get("agent", []))
    n = min(points, max(len(caller), len(agent)))
    return {
        "call_sid": call_sid,
        "duration_ms": row["duration_ms"],
        "sample_rate": row["sample_rate"],
        "complete": row["complete"],
        "reason": row["reason"],
        "points": n,
        "caller": _resample(caller, n),
        "agent": _resample(agent, n),
    }


def _resample(peaks: list[float], n: int) -> list[float]:
    """``n`` peaks from more: the largest of each slice."""
    if n <= 0 or not peaks:
        return [0.0] * max(n, 0)
    total = len(peaks)
    return [max(peaks[i * total // n: max((i + 1) * total // n, i * total // n + 1)]) for i in range(n)]
