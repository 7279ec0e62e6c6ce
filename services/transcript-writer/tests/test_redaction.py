"""Redaction before storage: what is found (spoken numbers included), what replaces it, which
lines the recording beeps over, and the retention of webhook deliveries and audit entries."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from dialtone_common.redact_config import KINDS, RedactConfigError, check_kinds
from dialtone_proto import CallAnalyzed, CallStarted, OutcomeSet, ToolCalled, TranscriptLine
from dialtone_writer import retention
from dialtone_writer.recorder_audio import DTMF_AFTER_MS, DTMF_BEFORE_MS, LEAD_MS, LineSpan, beep_spans
from dialtone_writer.redaction import DTMF_TEXT, Redactor, luhn
from dialtone_writer.settings import WriterSettings
from dialtone_writer.store import write_events

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ALL = frozenset(KINDS)


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor(["card_number"], {"open": frozenset(), "strict": ALL})


@pytest.mark.parametrize(("said", "stored"), [
    ("My card is 4111 1111 1111 1111.", "My card is [card number]."),
    ("four one one one, one one one one, one one one one, one one one one", "[card number]"),
    ("forty-one eleven, eleven eleven, eleven eleven, eleven eleven please", "[card number] please"),
    ("4111 1111, um, 1111 then 1111 is it", "[card number] is it"),
    ("five five five five five five five five five five five five four four four four, twelve twenty-eight",
     "[card number], twelve twenty-eight"),
    ("it is 5555-5555-5555-4444 expiry 12 28", "it is [card number] expiry 12 28"),
    ("my social security number is five three six, nine oh, four three nine nine", "my social security number is [SSN]"),
    ("SSN 536-90-4399", "SSN [SSN]"),
    ("write to jane.doe@example.com today", "write to [email] today"),
    ("it's jane dot doe at example dot com", "it's [email]"),
    ("call me on two one two, five five five, oh one two three", "call me on [phone number]"),
    ("IBAN DE89 3704 0044 0532 0130 00 thanks", "IBAN [IBAN] thanks"),
    ("I was born on March 5th, 1980.", "I was born on [date of birth]."),
    ("date of birth is the fifth of March nineteen eighty", "date of birth is [date of birth]"),
])  # fmt: skip
def test_personal_data_is_replaced_however_it_was_said(redactor: Redactor, said: str, stored: str) -> None:
    assert redactor.redact_text(said, ALL)[0] == stored


@pytest.mark.parametrize("said", [
    "card 4111 1111 1111 1112 please",  # fails the Luhn check
    "your order 123456789 ships tomorrow",  # nine digits, nobody said SSN
    "The meeting is on March 5th, 2026.",  # a date, not a birth date
    "Oh I see, one moment, I have two questions.",
    "Your order A-1234 ships tomorrow morning.",
])  # fmt: skip
def test_ordinary_words_and_numbers_are_kept(redactor: Redactor, said: str) -> None:
    assert redactor.redact_text(said, ALL) == (said, set())


def test_only_the_kinds_asked_for_are_redacted(redactor: Redactor) -> None:
    said = "4111111111111111 and jane.doe@example.com"
    assert redactor.redact_text(said, frozenset({"card_number"})) == ("[card number] and jane.doe@example.com", {"card_number"})
    assert redactor.kinds("open") == frozenset() and redactor.kinds("strict") == ALL
    assert redactor.kinds("anyone") == frozenset({"card_number"}) and redactor.kinds(None) == frozenset({"card_number"})


def test_events_are_redacted_field_by_field(redactor: Redactor) -> None:
    common = {"call_id": "CA1", "at": T0}
    line = TranscriptLine(id="l1", item_id="i1", seq=0, role="agent", text="Your card 4111 1111 1111 1111 is",
                          full_text="Your card 4111 1111 1111 1111 is on file.", agent="any", **common)
    clean, found = redactor.redact_event(line, None)
    assert isinstance(clean, TranscriptLine) and found == {"card_number"}
    assert (clean.text, clean.full_text) == ("Your card [card number] is", "Your card [card number] is on file.")
    dtmf = TranscriptLine(id="l2", item_id="i2", seq=1, role="caller", text="pressed 4", source="dtmf", agent="any", **common)
    assert redactor.redact_event(dtmf, None) == (dtmf.model_copy(update={"text": DTMF_TEXT}), {"dtmf"})
    kept = dtmf.model_copy(update={"agent": "open"})
    assert redactor.redact_event(kept, None) == (kept, set())  # an agent that redacts nothing keeps keypresses
    tool = ToolCalled(id="t1", tool_call_id="c1", seq=2, name="pay", agent="strict", ok=True, duration_ms=1,
                      arguments={"card": 4111111111111111, "amount": 20, "who": {"mail": "jane.doe@example.com"}},
                      raw_arguments='{"card": "4111111111111111"}', result=["ok", 5555555555554444], **common)
    clean_tool, found = redactor.redact_event(tool, None)
    assert isinstance(clean_tool, ToolCalled) and found == {"card_number", "email"}
    assert clean_tool.arguments == {"card": "[card number]", "amount": 20, "who": {"mail": "[email]"}}
    assert clean_tool.raw_arguments == '{"card": "[card number]"}' and clean_tool.result == ["ok", "[card number]"]
    analyzed = CallAnalyzed(id="a1", analysis={"summary": "Paid with 4111111111111111."}, **common)
    assert redactor.redact_event(analyzed, "any")[0].analysis == {"summary": "Paid with [card number]."}  # type: ignore[union-attr]
    outcome = OutcomeSet(id="o1", outcome="paid", detail="card 4111111111111111", **common)
    assert redactor.redact_event(outcome, "open") == (outcome, set())  # the call's agent decides
    started = CallStarted(id="s1", agent="strict", variables={"email": "jane.doe@example.com"}, **common)
    assert redactor.redact_event(started, None)[0].variables == {"email": "[email]"}  # type: ignore[union-attr]


def test_the_kinds_are_checked() -> None:
    assert check_kinds("card_number, email", "REDACT") == {"card_number", "email"}
    assert check_kinds([], "x") == frozenset()
    with pytest.raises(RedactConfigError, match="unknown redact kinds \\['cards'\\]"):
        check_kinds(["cards"], "agent.toml")
    with pytest.raises(RedactConfigError, match="must be a list"):
        check_kinds(4, "agent.toml")
    with pytest.raises(ValueError, match="unknown redact kinds"):
        WriterSettings(database_url="postgresql://x", redact="card_number,passport")


def test_the_recording_is_beeped_over_the_redacted_lines_only() -> None:
    lines = [
        LineSpan("agent", "speech", 0.0, 2000.0, False),
        LineSpan("caller", "speech", 3000.0, None, True),  # beeped until the agent answers at 6000
        LineSpan("agent", "speech", 6000.0, 1500.0, True),  # beeped over what the caller heard
        LineSpan("caller", "speech", 9000.0, None, False),
        LineSpan("caller", "dtmf", 12000.0, None, True),
        LineSpan("caller", "speech", 15000.0, None, True),  # the last line: to the end of the recording
    ]
    spans = beep_spans(lines)
    assert spans[:3] == [
        ("in", (3000 - LEAD_MS) * 8, 6000 * 8),
        ("out", (6000 - LEAD_MS) * 8, (7500 + LEAD_MS) * 8),
        ("in", (12000 - DTMF_BEFORE_MS) * 8, (12000 + DTMF_AFTER_MS) * 8),
    ]
    assert spans[3][:2] == ("in", (15000 - LEAD_MS) * 8) and spans[3][2] > 10**12
    # A redacted line that cannot be placed beeps its whole side.
    assert beep_spans([LineSpan("caller", "speech", None, None, True)]) == [("in", 0, 1 << 62)]


def test_luhn() -> None:
    assert luhn("4111111111111111") and luhn("5555555555554444") and not luhn("4111111111111112")


@pytest.mark.integration
async def test_nothing_unredacted_reaches_the_database(pool, redactor: Redactor) -> None:  # type: ignore[no-untyped-def]
    call = "CA" + uuid.uuid4().hex
    events = [
        CallStarted(id=f"{call}-s", call_id=call, at=T0, agent="strict"),
        TranscriptLine(id=f"{call}-l", call_id=call, at=T0, item_id="i1", seq=0, role="caller",
                       text="Card four one one one one one one one one one one one one one one one.", agent="strict",
                       offset_ms=1000.0),
        TranscriptLine(id=f"{call}-m", call_id=call, at=T0, item_id="i2", seq=1, role="agent", text="Thanks.",
                       agent="strict"),
    ]
    async with pool.acquire() as conn:
        await write_events(conn, events, None, redactor)
        rows = await conn.fetch("SELECT text, redacted FROM transcript_lines WHERE call_sid = $1 ORDER BY seq", call)
        ledger = await conn.fetchval("SELECT string_agg(payload::text, ' ') FROM call_events WHERE call_sid = $1", call)
        transcript = await conn.fetchval("SELECT transcript::text FROM call_sessions WHERE call_sid = $1", call)
    assert [(r["text"], r["redacted"]) for r in rows] == [("Card [card number].", ["card_number"]), ("Thanks.", None)]
    for text in (ledger, transcript):
        assert "[card number]" in text and "one one" not in text


@pytest.mark.integration
async def test_old_webhook_deliveries_and_audit_entries_are_deleted(pool, database_url: str) -> None:  # type: ignore[no-untyped-def]
    call = "CA" + uuid.uuid4().hex
    async with pool.acquire() as conn:
        for name, status, age in (("old-done", "delivered", 40), ("old-dead", "dead", 40), ("old-pending", "pending", 40),
                                  ("new-done", "delivered", 2)):  # fmt: skip
            await conn.execute(
                "INSERT INTO webhook_deliveries (id, endpoint, url, event_id, event_type, call_sid, event_at, created_at,"
                " status, retry_from, delivered_at) VALUES ($1, 'global', 'http://x', $1, 'call.ended', $2,"
                " now() - make_interval(days => $3), now() - make_interval(days => $3), $4,"
                " now() - make_interval(days => $3), CASE WHEN $4 = 'delivered' THEN now() - make_interval(days => $3) END)",
                f"{call}-{name}", call, age, status,
            )
        for age in (400, 10):
            await conn.execute("INSERT INTO audit_log (at, actor_kind, actor, action, call_sid) VALUES "
                               "(now() - make_interval(days => $1), 'token', 'token:x', 'view_call', $2)", age, call)
    settings = WriterSettings(database_url=database_url, webhook_deliveries_retention_days=30, audit_retention_days=365)
    done = await retention.sweep_once(pool, settings)
    assert done["webhook_deliveries"] >= 2 and done["audit_log"] >= 1
    async with pool.acquire() as conn:
        left = {r["id"].removeprefix(f"{call}-") for r in await conn.fetch(
            "SELECT id FROM webhook_deliveries WHERE call_sid = $1", call)}
        audit = await conn.fetchval("SELECT count(*) FROM audit_log WHERE call_sid = $1", call)
    assert left == {"old-pending", "new-done"} and audit == 1
    kept = await retention.sweep_once(pool, WriterSettings(database_url=database_url, webhook_deliveries_retention_days=0,
                                                            audit_retention_days=0))
    assert kept == {"webhook_deliveries": 0, "audit_log": 0}
