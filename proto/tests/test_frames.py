"""The raw audio/control frame format of the per-call subjects."""

from __future__ import annotations

import struct

import orjson
import pytest
from dialtone_proto.frames import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    TAP_IN,
    TAP_OUT,
    TAP_VERSION,
    Frame,
    FrameError,
    Kind,
    decode_frame,
    decode_tap,
    encode_control,
    encode_frame,
    tap_entry,
    transit_ms,
)

pytestmark = pytest.mark.unit

MULAW_20MS = bytes(range(160))


@pytest.mark.parametrize("kind", list(Kind))
def test_every_kind_round_trips(kind: Kind) -> None:
    payload = MULAW_20MS if kind is Kind.AUDIO else orjson.dumps({"name": "a7"})
    data = encode_frame(kind, 41, 123_456, payload)

    assert len(data) == HEADER_SIZE + len(payload)
    assert decode_frame(data) == Frame(kind, 41, 123_456, payload)


def test_header_layout_matches_the_documented_offsets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dialtone_proto.frames._now_ms", lambda: 0x7_1234_5678)
    data = encode_frame(Kind.MARK, 0x01020304, 0x0A0B0C0D, b"{}")

    assert data[:12] == bytes([1, Kind.MARK, 0x56, 0x78, 1, 2, 3, 4, 0x0A, 0x0B, 0x0C, 0x0D])


def test_transit_is_read_from_the_senders_clock_across_the_16_bit_wrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dialtone_proto.frames._now_ms", lambda: 5 * 65536 - 3)  # 3 ms before a wrap
    frame = decode_frame(encode_frame(Kind.AUDIO, 0, 0, b"\xff"))

    assert transit_ms(frame, now_ms=5 * 65536 + 4) == 7
    assert transit_ms(frame, now_ms=5 * 65536 - 3) == 0


def test_transit_of_a_skewed_clock_is_not_a_measurement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dialtone_proto.frames._now_ms", lambda: 1_000_000)
    frame = decode_frame(encode_frame(Kind.AUDIO, 0, 0))

    assert transit_ms(frame, now_ms=1_000_000 - 5) is None  # the receiver's clock is 5 ms behind
    assert transit_ms(frame, now_ms=1_000_000 + 40_000) is None  # or 40 s ahead


def test_largest_sequence_and_timestamp_survive() -> None:
    frame = decode_frame(encode_frame(Kind.AUDIO, 2**32 - 1, 2**32 - 1, b"\xff"))

    assert (frame.seq, frame.ts, frame.payload) == (2**32 - 1, 2**32 - 1, b"\xff")


def test_empty_audio_payload_is_allowed() -> None:
    assert decode_frame(encode_frame(Kind.AUDIO, 0, 0)).payload == b""


def test_payload_of_exactly_the_limit_round_trips() -> None:
    payload = b"\x7f" * MAX_PAYLOAD

    assert decode_frame(encode_frame(Kind.AUDIO, 1, 2, payload)).payload == payload


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(encode_frame(Kind.AUDIO, 1, 2)[:HEADER_SIZE - 1], id="short-header"),
        pytest.param(struct.pack(">BBHII", 2, Kind.AUDIO, 0, 0, 0) + b"\xff", id="version-2"),
        pytest.param(struct.pack(">BBHII", 0, Kind.AUDIO, 0, 0, 0), id="version-0"),
        pytest.param(struct.pack(">BBHII", 1, 0, 0, 0, 0), id="kind-0"),
        pytest.param(struct.pack(">BBHII", 1, 10, 0, 0, 0), id="kind-10"),
        pytest.param(struct.pack(">BBHII", 1, 255, 0, 0, 0), id="kind-255"),
        pytest.param(struct.pack(">BBHII", 1, Kind.AUDIO, 0, 0, 0) + b"\xff" * (MAX_PAYLOAD + 1), id="oversize"),
    ],
)
def test_malformed_frames_raise_frame_error(data: bytes) -> None:
    with pytest.raises(FrameError):
        decode_frame(data)


def test_encoding_an_oversize_payload_is_refused() -> None:
    with pytest.raises(FrameError):
        encode_frame(Kind.AUDIO, 0, 0, b"\xff" * (MAX_PAYLOAD + 1))


def test_frame_error_is_a_value_error() -> None:
    # Callers catch ValueError around decoding; FrameError must stay one.
    assert issubclass(FrameError, ValueError)


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        (Kind.MARK, {"name": "probe-0"}),
        (Kind.CLEAR, {}),
        (Kind.DTMF, {"digit": "#"}),
        (Kind.STOP, {"reason": "stop"}),
        (Kind.HANGUP, {"reason": "goodbye", "détail": "ünïcode"}),
    ],
)
def test_control_frames_carry_their_json_body(kind: Kind, body: dict) -> None:
    frame = decode_frame(encode_control(kind, 9, 500, body))

    assert frame.kind is kind
    assert (frame.seq, frame.ts) == (9, 500)
    assert frame.json() == body


def test_control_frame_with_empty_payload_reads_as_empty_object() -> None:
    assert decode_frame(encode_frame(Kind.CLEAR, 0, 0)).json() == {}


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b'"name"', b"{", b"\xff\xfe"])
def test_control_payload_that_is_not_a_json_object_raises_frame_error(payload: bytes) -> None:
    frame = decode_frame(encode_frame(Kind.MARK, 0, 0, payload))

    with pytest.raises(FrameError):
        frame.json()


def _tap(*entries: tuple[int, int, bytes]) -> bytes:
    return bytes([TAP_VERSION]) + b"".join(tap_entry(side, at, f) + f for side, at, f in entries)


def test_a_tap_batch_gives_back_both_sides_in_order_with_the_gateways_clock() -> None:
    caller = encode_frame(Kind.AUDIO, 7, 140, b"\x01" * 160)
    agent = encode_control(Kind.MARK, 3, 0, {"name": "m1"})
    echo = encode_control(Kind.MARK, 8, 0, {"name": "m1"})
    got = decode_tap(_tap((TAP_IN, 1_765_000_000_000, caller), (TAP_OUT, 1_765_000_000_005, agent),
                          (TAP_IN, 1_765_000_000_020, echo)))
    assert [(side, at, f.kind, f.seq) for side, at, f in got] == [
        (TAP_IN, 1_765_000_000_000, Kind.AUDIO, 7), (TAP_OUT, 1_765_000_000_005, Kind.MARK, 3),
        (TAP_IN, 1_765_000_000_020, Kind.MARK, 8),
    ]
    assert got[0][2].payload == b"\x01" * 160 and got[1][2].json() == {"name": "m1"}


@pytest.mark.parametrize("data", [
    b"", b"\x02", _tap((TAP_IN, 1, encode_frame(Kind.AUDIO, 0, 0, b"x")))[:-1],
    _tap((TAP_IN, 1, encode_frame(Kind.AUDIO, 0, 0, b"x")))[:5],
    _tap((2, 1, encode_frame(Kind.AUDIO, 0, 0, b"x"))),
    _tap((TAP_IN, 1, b"\x01\x01")),
], ids=["empty", "unknown_version", "cut_inside_a_frame", "cut_inside_an_entry_header", "no_such_side",
        "frame_shorter_than_its_header"])  # ids: the frames carry the clock, so their bytes differ per run
def test_a_malformed_tap_batch_is_refused_whole(data: bytes) -> None:
    with pytest.raises(FrameError):
        decode_tap(data)
