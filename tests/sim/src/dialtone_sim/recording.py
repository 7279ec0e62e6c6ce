"""Reading a call's recording back as a test checks it: fetched from the admin API, split into the
caller's and the agent's channels, sample by sample."""

from __future__ import annotations

import array

import aiohttp

__all__ = ["channels", "fetch"]


async def fetch(base_url: str, token: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict]:
    """GET ``path`` of the admin API at ``base_url`` with the bearer ``token``: status, body, headers."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.get(base_url + path, headers=headers or {}) as r:
            return r.status, await r.read(), dict(r.headers)


def channels(wav: bytes) -> tuple[list[int], list[int]]:
    """The caller's (left) and the agent's (right) samples of a stereo 16-bit 8 kHz WAV."""
    assert wav[:4] == b"RIFF" and wav[8:16] == b"WAVEfmt " and wav[36:40] == b"data"
    assert int.from_bytes(wav[22:24], "little") == 2 and int.from_bytes(wav[24:28], "little") == 8000
    assert int.from_bytes(wav[34:36], "little") == 16
    samples = array.array("h")
    samples.frombytes(wav[44:])
    return list(samples[0::2]), list(samples[1::2])
