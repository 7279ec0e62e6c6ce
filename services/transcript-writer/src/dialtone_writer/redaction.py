"""Personal data kept out of storage: every event is redacted here before the writer stores it.

**Where, and why here.** The writer is the one door to PostgreSQL: transcript lines, tool calls,
outcomes and analyses are written by ``store.write_events`` and by nothing else, and the webhook
payloads and the analysis are built from those rows. Redacting at that door covers every table with
one rule and one configuration, and keeps the call's path (the bridge) free of it: the bridge must
give the model the caller's real words (a payment tool needs the card number), and a bridge that
takes a call over restores the conversation from the events on JetStream. What stays unredacted,
and how an operator bounds it, is in docs/SECURITY.md.

**Detection** is Microsoft Presidio's pattern recognizers (``presidio-analyzer``): card numbers with
their Luhn check, US SSNs (with Presidio's invalid-number filter), emails, phone numbers
(Google's libphonenumber underneath), IBANs with their checksum. Presidio runs with its ``no_op``
NLP engine: no spaCy model is loaded or downloaded, only the patterns run. The email
recognizer's top-level-domain check uses tldextract's bundled suffix list, never the network.
Dates of birth are a recognizer of our own (a date after "born", "birth", "DOB" ...), since
Presidio's date recognizer finds every date and its context words need an NLP model.
``presidio-anonymizer`` puts the placeholders in.

**Spoken numbers.** A transcript writes a card number as the caller said it: ``four one one one,
one one one one ...``, ``4111 1111, um, 1111 1111``, or ``forty-one eleven ...``. Each text is
therefore analysed twice: as written, and normalised (number words as digits, digits said in
groups joined into one run across spaces, commas, dashes and fillers, ``jane dot doe at example
dot com`` as an address). A finding in the normalised text is mapped back to the words it came
from, so the placeholder replaces exactly what was said.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dialtone_common.redact_config import KINDS
from dialtone_proto import CallAnalyzed, CallStarted, Event, OutcomeSet, ToolCalled, TranscriptLine

log = logging.getLogger(__name__)

# Presidio entity -> our kind.
_ENTITIES = {
    "CREDIT_CARD": "card_number",
    "US_SSN": "us_ssn",
    "EMAIL_ADDRESS": "email",
    "PHONE_NUMBER": "phone_number",
    "IBAN_CODE": "iban",
    "DATE_OF_BIRTH": "date_of_birth",
}
DTMF = "dtmf"  # a keypress hidden because card numbers are redacted (recorder: silence around it)
DTMF_TEXT = "pressed [keypad digit]"
MIN_SCORE = 0.4  # Presidio's scores: validated card/IBAN/email 1.0, phone 0.4, dashed SSN 0.5
_SSN_CUE = re.compile(r"\b(ssn|social|security)\b", re.I)
_DOB_CUE = re.compile(r"\b(born|birth|birthday|dob|d\.o\.b)\b", re.I)
_CUE_WINDOW = 60  # characters before a weak finding in which its cue word must stand

_UNITS = {"zero": 0, "oh": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
          "eight": 8, "nine": 9}  # fmt: skip
_TEENS = {"ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
          "seventeen": 17, "eighteen": 18, "nineteen": 19}  # fmt: skip
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
         "ninety": 90}  # fmt: skip
_ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
             "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13, "fourteenth": 14,
             "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18, "nineteenth": 19,
             "twentieth": 20, "thirtieth": 30}  # fmt: skip
_REPEAT = {"double": 2, "triple": 3}
# Said between the groups of a number ("4111 1111, um, 1111 ..."): they do not break the run.
_FILLERS = {"and", "uh", "um", "er", "erm", "ah", "then", "dash", "hyphen", "space", "so", "like"}
_TOKEN = re.compile(r"\s+|[A-Za-z]+|\d+|[^\sA-Za-z\d]")
_SPOKEN_EMAIL = re.compile(
    r"\b[A-Za-z0-9][\w+-]*(?:\s+(?:dot|underscore|dash)\s+[\w+-]+)*\s+at\s+[A-Za-z0-9][\w-]*(?:\s+dot\s+[A-Za-z0-9][\w-]*)+\b",
    re.I,
)
_EMAIL_WORDS = {"dot": ".", "at": "@", "underscore": "_", "dash": "-"}
_MONTHS = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?"
           r"|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)")  # fmt: skip
_DATE = re.compile(
    rf"\b(?:\d{{1,4}}[/.-]\d{{1,2}}[/.-]\d{{2,4}}"
    rf"|{_MONTHS}\.?\s+(?:the\s+)?\d{{1,2}}(?:st|nd|rd|th)?,?\s+(?:of\s+)?\d{{4}}"
    rf"|(?:the\s+)?\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTHS},?\s+\d{{4}}"
    rf"|{_MONTHS}\s+\d{{4}})\b",
    re.I,
)


@dataclass(frozen=True, slots=True)
class Span:
    """A finding in the original text: ``[start, end)`` and its kind."""

    start: int
    end: int
    kind: str


class _Normalised:
    """A text rewritten for matching, with each character's origin in the original.

    ``pieces`` are ``(text, start, end)``: the piece stands for ``original[start:end]``.
    """

    def __init__(self, text: str) -> None:
        self.pieces: list[tuple[str, int, int]] = []
        pos = 0
        for m in _SPOKEN_EMAIL.finditer(text):
            self._words(text, pos, m.start())
            for part in re.finditer(r"\s+(dot|at|underscore|dash)\s+|\S+?(?=\s|$)|\S+", m.group(0)):
                start, end = m.start() + part.start(), m.start() + part.end()
                word = part.group(1)
                self.pieces.append((_EMAIL_WORDS[word.lower()] if word else part.group(0), start, end))
            pos = m.end()
        self._words(text, pos, len(text))
        self._join_digit_runs()
        self.text = "".join(p[0] for p in self.pieces)
        self._origin: list[int] = []
        for i, (piece, _, _) in enumerate(self.pieces):
            self._origin += [i] * len(piece)

    def _words(self, text: str, start: int, end: int) -> None:
        tokens = [(m.group(0), start + m.start(), start + m.end()) for m in _TOKEN.finditer(text, start, end)]
        i = 0
        while i < len(tokens):
            word, s, e = tokens[i]
            low = word.lower()
            nxt = _next_word(tokens, i)
            if low in _TENS and nxt is not None and tokens[nxt][0].lower() in _UNITS and tokens[nxt][0].lower() != "oh":
                # "forty one", "forty-one": 41
                self.pieces.append((str(_TENS[low] + _UNITS[tokens[nxt][0].lower()]), s, tokens[nxt][2]))
                i = nxt + 1
                continue
            if low in _REPEAT and nxt is not None and tokens[nxt][0].lower() in _UNITS:
                self.pieces.append((str(_UNITS[tokens[nxt][0].lower()]) * _REPEAT[low], s, tokens[nxt][2]))
                i = nxt + 1
                continue
            if low == "oh" and not self._beside_digits(tokens, i):
                self.pieces.append((word, s, e))
            elif low in _UNITS or low in _TEENS or low in _TENS:
                self.pieces.append((str({**_UNITS, **_TEENS, **_TENS}[low]), s, e))
            elif low in _ORDINALS:
                self.pieces.append((f"{_ORDINALS[low]}th", s, e))
            else:
                self.pieces.append((" " if word.isspace() else word, s, e))
            i += 1

    @staticmethod
    def _beside_digits(tokens: list[tuple[str, int, int]], i: int) -> bool:
        def digit(j: int | None) -> bool:
            if j is None:
                return False
            w = tokens[j][0].lower()
            return w.isdigit() or w in _UNITS or w in _TEENS or w in _TENS

        prev = next((j for j in range(i - 1, -1, -1) if not tokens[j][0].isspace()), None)
        return digit(prev) or digit(_next_word(tokens, i))

    def _join_digit_runs(self) -> None:
        """Drop what stands between two groups of digits (spaces, commas, dashes, dots, fillers),
        so ``4 1 1 1, 1 1 1 1`` reads ``41111111``."""
        out: list[tuple[str, int, int]] = []
        i = 0
        while i < len(self.pieces):
            out.append(self.pieces[i])
            if self.pieces[i][0].isdigit():
                j = i + 1
                while j < len(self.pieces) and _separator(self.pieces[j][0]):
                    j += 1
                if j < len(self.pieces) and j > i + 1 and self.pieces[j][0].isdigit():
                    out += [("", s, e) for _, s, e in self.pieces[i + 1 : j]]
                    i = j
                    continue
            i += 1
        self.pieces = out

    def origin(self, start: int, end: int) -> tuple[int, int]:
        """The original span of the normalised ``[start, end)``, widened to whole pieces."""
        first, last = self.pieces[self._origin[start]], self.pieces[self._origin[end - 1]]
        return first[1], last[2]


def _next_word(tokens: list[tuple[str, int, int]], i: int) -> int | None:
    """The next token after ``i`` that is not a space, a hyphen between words counting as a space."""
    j = i + 1
    while j < len(tokens) and (tokens[j][0].isspace() or tokens[j][0] == "-"):
        j += 1
    return j if j < len(tokens) and j <= i + 3 else None


def _separator(piece: str) -> bool:
    return piece.isspace() or piece in {",", "-", ".", ""} or piece.lower() in _FILLERS


class Redactor:
    """Finds the kinds of personal data an agent redacts, and puts placeholders in their place.

    Args:
        default: the kinds of a call whose agent has no ``redact`` list (``REDACT``).
        agents: each agent's own kinds (``agent.toml`` ``redact``).

    Building one loads Presidio (about two seconds, once per process).
    """

    def __init__(self, default: Iterable[str], agents: Mapping[str, frozenset[str]]) -> None:
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import NlpEngineProvider
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            EmailRecognizer,
            IbanRecognizer,
            PhoneRecognizer,
            UsSsnRecognizer,
        )
        from presidio_anonymizer import AnonymizerEngine
        from presidio_anonymizer.entities import OperatorConfig
        from tldextract import TLDExtract

        offline = TLDExtract(suffix_list_urls=(), cache_dir=None)

        class OfflineEmailRecognizer(EmailRecognizer):
            """Presidio's email recognizer, its domain checked against the bundled suffix list."""

            def validate_result(self, pattern_text: str) -> bool:
                return offline(pattern_text).fqdn != ""

        self.default = frozenset(default)
        self.agents = dict(agents)
        registry = RecognizerRegistry(supported_languages=["en"])
        for recognizer in (CreditCardRecognizer(), UsSsnRecognizer(), OfflineEmailRecognizer(), PhoneRecognizer(),
                           IbanRecognizer()):
            registry.add_recognizer(recognizer)
        nlp = NlpEngineProvider(nlp_configuration={
            "nlp_engine_name": "no_op", "models": [{"lang_code": "en", "model_name": "no_op"}]}).create_engine()
        self._analyzer = AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["en"])
        self._anonymizer = AnonymizerEngine()
        self._operators = {kind: OperatorConfig("replace", {"new_value": KINDS[kind]}) for kind in KINDS}
        self._entities = {kind: [e for e, k in _ENTITIES.items() if k == kind] for kind in KINDS}

    def kinds(self, agent: str | None) -> frozenset[str]:
        """What the calls of ``agent`` redact (its list, else the default)."""
        return self.agents.get(agent or "", self.default)

    # ---- text -----------------------------------------------------------------------------
    def find(self, text: str, kinds: frozenset[str]) -> list[Span]:
        """Every finding of ``kinds`` in ``text``, in original coordinates, overlaps kept."""
        if not kinds or not text.strip():
            return []
        entities = [e for k in sorted(kinds) for e in self._entities[k] if e != "DATE_OF_BIRTH"]
        spans: list[Span] = []
        norm = _Normalised(text)
        for variant, mapped in ((text, None), (norm.text, norm)):
            if mapped is not None and variant == text:
                continue
            for r in self._analyzer.analyze(variant, language="en", entities=entities) if entities else []:
                if not self._accept(variant, r.entity_type, r.start, r.score):
                    continue
                start, end = (r.start, r.end) if mapped is None else mapped.origin(r.start, r.end)
                spans.append(Span(start, end, _ENTITIES[r.entity_type]))
            if mapped is not None and "card_number" in kinds:
                spans += [Span(*mapped.origin(a, b), "card_number") for a, b in _cards_in_long_runs(variant)]
            if "date_of_birth" in kinds:
                for m in _DATE.finditer(variant):
                    if _DOB_CUE.search(variant[max(0, m.start() - _CUE_WINDOW): m.start()]):
                        start, end = (m.start(), m.end()) if mapped is None else mapped.origin(m.start(), m.end())
                        spans.append(Span(start, end, "date_of_birth"))
        return spans

    @staticmethod
    def _accept(text: str, entity: str, start: int, score: float) -> bool:
        if entity == "US_SSN" and score < 0.5:  # a bare nine digits: an SSN only when said to be one
            return bool(_SSN_CUE.search(text[max(0, start - _CUE_WINDOW): start]))
        return score >= MIN_SCORE

    def redact_text(self, text: str, kinds: frozenset[str]) -> tuple[str, set[str]]:
        """``text`` with a placeholder for each finding, and the kinds found."""
        spans = self.find(text, kinds)
        if not spans:
            return text, set()
        from presidio_anonymizer.entities import RecognizerResult

        results = [RecognizerResult(s.kind, s.start, s.end, 1.0) for s in _merge(spans)]
        return self._anonymizer.anonymize(text, results, self._operators).text, {s.kind for s in spans}

    def redact_json(self, value: Any, kinds: frozenset[str], found: set[str]) -> Any:
        """A copy of a JSON value with every string (and every number that is a card or phone
        number) redacted; the kinds found are added to ``found``."""
        if isinstance(value, str):
            text, kinds_found = self.redact_text(value, kinds)
            found |= kinds_found
            return text
        if isinstance(value, dict):
            return {k: self.redact_json(v, kinds, found) for k, v in value.items()}
        if isinstance(value, list):
            return [self.redact_json(v, kinds, found) for v in value]
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**6:
            text, kinds_found = self.redact_text(str(value), kinds)
            if kinds_found:
                found |= kinds_found
                return text
        return value

    # ---- events ---------------------------------------------------------------------------
    def redact_event(self, event: Event, agent: str | None) -> tuple[Event, set[str]]:
        """The event as it may be stored, and the kinds that were taken out of it.

        Args:
            event: as published on the bus.
            agent: the call's agent, for events that do not name one (an analysis, an outcome).
        """
        found: set[str] = set()
        match event:
            case TranscriptLine():
                kinds = self.kinds(event.agent)
                if event.source == "dtmf" and "card_number" in kinds:
                    # A keypress may be a card digit, and whether it is shows only once the digits
                    # after it are in: no keypad digit is stored while card numbers are redacted.
                    return event.model_copy(update={"text": DTMF_TEXT}), {DTMF}
                text, f1 = self.redact_text(event.text, kinds)
                full = None
                if event.full_text is not None:
                    full, f2 = self.redact_text(event.full_text, kinds)
                    f1 |= f2
                return (event.model_copy(update={"text": text, "full_text": full}), f1) if f1 else (event, f1)
            case ToolCalled():
                kinds = self.kinds(event.agent)
                update = {
                    "arguments": self.redact_json(event.arguments, kinds, found),
                    "raw_arguments": self.redact_json(event.raw_arguments, kinds, found),
                    "result": self.redact_json(event.result, kinds, found),
                    "error": self.redact_json(event.error, kinds, found),
                }
                return (event.model_copy(update=update), found) if found else (event, found)
            case CallAnalyzed():
                analysis = self.redact_json(event.analysis, self.kinds(agent), found)
                return (event.model_copy(update={"analysis": analysis}), found) if found else (event, found)
            case OutcomeSet():
                detail = self.redact_json(event.detail, self.kinds(agent), found)
                return (event.model_copy(update={"detail": detail}), found) if found else (event, found)
            case CallStarted():
                variables = self.redact_json(event.variables, self.kinds(event.agent), found)
                return (event.model_copy(update={"variables": variables}), found) if found else (event, found)
        return event, found


_CARD_LENGTHS = (16, 15, 19, 18, 17, 14, 13)


def luhn(digits: str) -> bool:
    """Whether ``digits`` pass the Luhn check of card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _cards_in_long_runs(text: str) -> list[tuple[int, int]]:
    """Card numbers at the start or the end of a run of digits too long to be one (a card number
    said with its expiry date or its security code, the groups joined): the first or last 13 to
    19 digits, when they pass the Luhn check and start as cards do (3 to 6)."""
    found = []
    for m in re.finditer(r"\d{20,}", text):
        run = m.group(0)
        # Said first, then the expiry, is the usual order; 16 and 15 digits are most cards.
        windows = [(0, n) for n in _CARD_LENGTHS] + [(len(run) - n, len(run)) for n in _CARD_LENGTHS]
        for a, b in windows:
            if run[a] in "3456" and luhn(run[a:b]):
                found.append((m.start() + a, m.start() + b))
                break
    return found


def _merge(spans: list[Span]) -> list[Span]:
    """Overlapping findings as one (the kind of the longest), so no digit of either is left."""
    out: list[Span] = []
    for s in sorted(spans, key=lambda s: (s.start, -(s.end - s.start))):
        if out and s.start < out[-1].end:
            last = out[-1]
            longer = last if last.end - last.start >= s.end - s.start else s
            out[-1] = Span(last.start, max(last.end, s.end), longer.kind)
        else:
            out.append(s)
    return out
