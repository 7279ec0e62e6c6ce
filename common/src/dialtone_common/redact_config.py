"""Which personal data is kept out of storage: the ``REDACT`` default and each agent's ``redact``.

::

    # agent.toml
    redact = ["card_number", "email"]    # this agent's kinds; [] redacts nothing; unset: REDACT

The transcript-writer redacts every event of a call with the kinds of the call's agent before it
writes anything to PostgreSQL (``dialtone_writer.redaction``); the bridge reads the same files and
checks only their shape, so a misspelt kind stops the service that would take the agent's calls.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

# kind -> the placeholder stored instead of the value.
KINDS: dict[str, str] = {
    "card_number": "[card number]",
    "us_ssn": "[SSN]",
    "email": "[email]",
    "phone_number": "[phone number]",
    "iban": "[IBAN]",
    "date_of_birth": "[date of birth]",
}
# What REDACT is unless set: the identifiers nobody needs in a transcript (PCI DSS forbids storing
# card numbers). Emails and phone numbers are what a CRM usually wants from a call, so they are
# redacted only where an operator asks for it.
DEFAULT_REDACT = ("card_number", "us_ssn", "iban")


class RedactConfigError(ValueError):
    """A ``redact`` list or ``REDACT`` value that names a kind Dialtone does not know."""


def check_kinds(raw: Any, where: str) -> frozenset[str]:
    """The kinds of a ``redact`` list (or a comma-separated ``REDACT`` string).

    Raises:
        RedactConfigError: not a list of strings, or a kind unknown (the message lists the known ones).
    """
    if isinstance(raw, str):
        raw = [k.strip() for k in raw.split(",") if k.strip()]
    if not isinstance(raw, list | tuple) or not all(isinstance(k, str) for k in raw):
        raise RedactConfigError(f"{where}: redact must be a list of kinds, e.g. [\"card_number\", \"email\"]")
    unknown = sorted(set(raw) - set(KINDS))
    if unknown:
        raise RedactConfigError(f"{where}: unknown redact kinds {unknown}; known: {list(KINDS)}")
    return frozenset(raw)


def load_agent_redaction(agents_dir: Path) -> dict[str, frozenset[str]]:
    """Every agent's own ``redact`` list, by agent name (its folder); agents without one are left
    out (they use the default).

    Raises:
        RedactConfigError: a file that cannot be read, or a list that is wrong.
    """
    if not agents_dir.is_dir():
        return {}
    out: dict[str, frozenset[str]] = {}
    for path in sorted(agents_dir.glob("*/agent.toml")):
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise RedactConfigError(f"{path}: {exc}") from exc
        if "redact" in raw:
            out[path.parent.name] = check_kinds(raw["redact"], str(path))
    return out
