"""The Twilio Media Streams edge: every message of PROTOCOLS.md 1.3 in, the three messages out."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from dialtone_gateway import twilio_protocol as tp

pytestmark = pytest.mark.unit

STREAM = "MZ" + "a" * 32
CALL = "CA" + "b" * 32
ACCOUNT = "AC" + "c" * 32
AUDIO = bytes(range(256))[:160]


def _msg(body: dict[str, Any]) -> str:
    return orjson.dumps(body).decode()


CONNECTED = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
START = {
    "event": "start",
    "sequenceNumber": "1",
    "streamSid": STREAM,
    "start": {
        "accountSid": ACCOUNT,
        "streamSid": STREAM,
        "callSid": CALL,
        "tracks": ["inbound"],
        "customParameters": {"agent": "support", "from": "+15550001", "v_order": "42"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    },
}
MEDIA = {
    "event": "media",
    "sequenceNumber": "3",
    "streamSid": STREAM,
    "media": {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": base64.b64encode(AUDIO).decode()},
}
DTMF = {"event": "dtmf", "streamSid": STREAM, "sequenceNumber": "4", "dtmf": {"track": "inbound_track", "digit": "1"}}
MARK = {"event": "mark", "streamSid": STREAM, "sequenceNumber": "5", "mark": {"name": "a17"}}
STOP = {"event": "stop", "streamSid": STREAM, "sequenceNumber": "6", "stop": {"accountSid": ACCOUNT, "callSid": CALL}}


def test_connected() -> None:
    assert tp.parse(_msg(CONNECTED)) == tp.Connected()


def test_start_carries_the_call_and_its_custom_parameters() -> None:
    assert tp.parse(_msg(START)) == tp.Start(
        stream_sid=STREAM,
        call_sid=CALL,
        account_sid=ACCOUNT,
        custom_parameters={"agent": "support", "from": "+15550001", "v_order": "42"},
    )


def test_start_without_parameters_or_format() -> None:
    start = {"event": "start", "streamSid": STREAM, "start": {"callSid": CALL}}

    assert tp.parse(_msg(start)) == tp.Start(stream_sid=STREAM, call_sid=CALL, account_sid=None)


def test_media_decodes_the_payload_and_the_string_timestamp() -> None:
    assert tp.parse(_msg(MEDIA)) == tp.Media(timestamp=5, payload=AUDIO)


def test_media_parses_from_bytes_too() -> None:
    assert tp.parse(_msg(MEDIA).encode()) == tp.Media(timestamp=5, payload=AUDIO)


def test_media_of_a_long_call_keeps_its_timestamp() -> None:
    body = _msg(MEDIA).replace('"timestamp":"5"', '"timestamp":"3599980"')

    assert tp.parse(body).timestamp == 3_599_980


@pytest.mark.parametrize("digit", list("0123456789*#"))
def test_dtmf_digits(digit: str) -> None:
    assert tp.parse(_msg(DTMF | {"dtmf": {"track": "inbound_track", "digit": digit}})) == tp.Dtmf(digit)


def test_mark_echo() -> None:
    assert tp.parse(_msg(MARK)) == tp.Mark("a17")


def test_stop() -> None:
    assert tp.parse(_msg(STOP)) == tp.Stop()


def _reason(text: str | bytes) -> str:
    with pytest.raises(tp.BadMessage) as info:
        tp.parse(text)
    return info.value.reason


@pytest.mark.parametrize(
    "text",
    ["", "not json", "{", '{"event": "media"', b"\xff\xfe", "[]", '"media"', "42", "null"],
)
def test_not_a_json_object_is_bad_json(text: str | bytes) -> None:
    assert _reason(text) == "bad_json"


@pytest.mark.parametrize(
    "body",
    [{"event": "clear"}, {"event": "Media"}, {"event": None}, {}, {"event": "x" * 500}, {"event": ["media"]}],
    ids=["clear", "case", "null", "missing", "long", "list"],
)
def test_unknown_events_are_unknown_event(body: dict[str, Any]) -> None:
    assert _reason(_msg(body)) == "unknown_event"


def _without(body: dict[str, Any], *path: str) -> dict[str, Any]:
    copy = orjson.loads(orjson.dumps(body))
    inner = copy
    for key in path[:-1]:
        inner = inner[key]
    del inner[path[-1]]
    return copy


def _with(body: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    copy = orjson.loads(orjson.dumps(body))
    inner = copy
    for key in path[:-1]:
        inner = inner[key]
    inner[path[-1]] = value
    return copy


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(_without(MEDIA, "media"), id="media-no-media"),
        pytest.param(_without(MEDIA, "media", "payload"), id="media-no-payload"),
        pytest.param(_without(MEDIA, "media", "timestamp"), id="media-no-timestamp"),
        pytest.param(_with(MEDIA, ("media", "payload"), "not base64!"), id="media-bad-base64"),
        pytest.param(_with(MEDIA, ("media", "payload"), "QUJ"), id="media-bad-padding"),
        pytest.param(_with(MEDIA, ("media", "payload"), 12), id="media-payload-number"),
        pytest.param(_with(MEDIA, ("media", "timestamp"), "soon"), id="media-bad-timestamp"),
        pytest.param(_with(MEDIA, ("media", "track"), "outbound"), id="media-outbound-track"),
        pytest.param(_with(MEDIA, ("media",), "payload"), id="media-not-object"),
        pytest.param(_without(START, "start"), id="start-no-start"),
        pytest.param(_without(START, "start", "callSid"), id="start-no-callsid"),
        pytest.param(_with(START, ("start", "customParameters"), ["agent"]), id="start-params-list"),
        pytest.param(_without(MARK, "mark"), id="mark-no-mark"),
        pytest.param(_without(MARK, "mark", "name"), id="mark-no-name"),
        pytest.param(_without(DTMF, "dtmf"), id="dtmf-no-dtmf"),
        pytest.param(_without(DTMF, "dtmf", "digit"), id="dtmf-no-digit"),
        pytest.param(_with(DTMF, ("dtmf", "digit"), "12"), id="dtmf-two-digits"),
        pytest.param(_with(DTMF, ("dtmf", "digit"), "E"), id="dtmf-letter-e"),
        pytest.param(_with(DTMF, ("dtmf", "digit"), ""), id="dtmf-empty"),
        pytest.param(_with(DTMF, ("dtmf", "digit"), "ab"), id="dtmf-two-letters"),
    ],
)
def test_malformed_fields_are_bad_field(body: dict[str, Any]) -> None:
    assert _reason(_msg(body)) == "bad_field"


@pytest.mark.parametrize(
    "fmt",
    [
        {"encoding": "audio/l16", "sampleRate": 8000, "channels": 1},
        {"encoding": "audio/x-mulaw", "sampleRate": 16000, "channels": 1},
        {"encoding": "audio/x-alaw", "sampleRate": 8000, "channels": 1},
    ],
)
def test_a_media_format_other_than_8k_mulaw_is_bad_format(fmt: dict[str, Any]) -> None:
    assert _reason(_msg(_with(START, ("start", "mediaFormat"), fmt))) == "bad_format"


def test_bad_message_is_a_value_error_with_a_readable_message() -> None:
    with pytest.raises(ValueError, match="bad_field"):
        tp.parse(_msg(_with(DTMF, ("dtmf", "digit"), "E")))


def test_outbound_media_is_raw_base64_mulaw() -> None:
    assert orjson.loads(tp.media(STREAM, b"\xff\x00\x7f")) == {
        "event": "media",
        "streamSid": STREAM,
        "media": {"payload": base64.b64encode(b"\xff\x00\x7f").decode()},
    }


def test_outbound_mark() -> None:
    assert orjson.loads(tp.mark(STREAM, "a3")) == {"event": "mark", "streamSid": STREAM, "mark": {"name": "a3"}}


def test_outbound_clear() -> None:
    assert orjson.loads(tp.clear(STREAM)) == {"event": "clear", "streamSid": STREAM}


def test_outbound_messages_are_text_json() -> None:
    for text in (tp.media(STREAM, b"\xff"), tp.mark(STREAM, "m"), tp.clear(STREAM)):
        assert isinstance(text, str)
