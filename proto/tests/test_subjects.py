"""Subject builders: a call id must never be able to change the shape of a NATS subject."""

from __future__ import annotations

import pytest
from dialtone_proto import subjects
from dialtone_proto.subjects import InvalidCallId, check_call_id

pytestmark = pytest.mark.unit

CALL_SID = "CA" + "0123456789abcdef" * 2

KEY = "Zq3-_" * 5
BUILDERS = [
    lambda c: subjects.call_in(c, KEY), lambda c: subjects.call_out(c, KEY), subjects.live,
    lambda c: subjects.event(c, "call.started"),
]


def test_subjects_of_a_twilio_call_sid() -> None:
    assert subjects.call_in(CALL_SID, KEY) == f"dt.v1.call.{CALL_SID}.{KEY}.in"
    assert subjects.call_out(CALL_SID, KEY) == f"dt.v1.call.{CALL_SID}.{KEY}.out"
    assert subjects.live(CALL_SID) == f"dt.v1.live.{CALL_SID}"


def test_event_subject_turns_the_type_dots_into_underscores() -> None:
    assert subjects.event(CALL_SID, "transcript.line") == f"dt.v1.events.{CALL_SID}.transcript_line"
    # One token per part: the events stream filter and the contract rely on five tokens.
    assert len(subjects.event(CALL_SID, "call.status").split(".")) == 5


def test_event_subjects_fall_under_the_stream_filter() -> None:
    assert subjects.EVENTS_ALL == "dt.v1.events.>"
    assert subjects.event(CALL_SID, "call.ended").startswith("dt.v1.events.")


@pytest.mark.parametrize("call_id", ["a", "A" * 64, "call_1-2", "-_-", CALL_SID])
def test_valid_call_ids_are_accepted(call_id: str) -> None:
    assert check_call_id(call_id) == call_id
    assert subjects.call_in(call_id, KEY).split(".")[3] == call_id


@pytest.mark.parametrize("key", ["", "a.b", "*", ">", "k\n", "x" * 65])
def test_stream_keys_that_would_break_a_subject_are_refused(key: str) -> None:
    with pytest.raises(InvalidCallId):
        subjects.call_in(CALL_SID, key)
    with pytest.raises(InvalidCallId):
        subjects.call_out(CALL_SID, key)


@pytest.mark.parametrize(
    "call_id",
    [
        pytest.param("", id="empty"),
        pytest.param("CA1.in", id="dot"),
        pytest.param("CA*", id="star"),
        pytest.param(">", id="gt"),
        pytest.param("CA 1", id="space"),
        pytest.param("CA\t1", id="tab"),
        pytest.param("CA1\r\nPUB x 1", id="crlf-injection"),
        pytest.param("CA1\n", id="trailing-newline"),
        pytest.param("A" * 65, id="65-chars"),
        pytest.param("CAé", id="non-ascii"),
        pytest.param("CA/1", id="slash"),
    ],
)
@pytest.mark.parametrize("build", BUILDERS, ids=["in", "out", "live", "event"])
def test_call_ids_that_would_break_a_subject_are_refused(build, call_id: str) -> None:
    with pytest.raises(InvalidCallId):
        build(call_id)


@pytest.mark.parametrize("call_id", [None, 123, b"CA1"])
def test_non_string_call_ids_are_refused(call_id: object) -> None:
    with pytest.raises(InvalidCallId):
        check_call_id(call_id)  # type: ignore[arg-type]


def test_invalid_call_id_is_a_value_error() -> None:
    assert issubclass(InvalidCallId, ValueError)
