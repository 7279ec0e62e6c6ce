"""Where webhooks go: the endpoints of the configuration, checked in one place.

Two sources (docs/CONTRACTS.md, Webhooks; README, "Wire a CRM"):

- the global endpoint, ``WEBHOOK_URL`` with ``WEBHOOK_SECRET`` (every call; ``WEBHOOK_EVENTS``);
- an agent's own endpoints, a ``[[webhooks]]`` array in its ``agent.toml``, for that agent's calls::

      [[webhooks]]
      name = "crm"                        # optional; unique within the agent (default: 1, 2, ...)
      url = "https://crm.example.com/hooks/dialtone"
      secret_env = "CRM_WEBHOOK_SECRET"   # the environment variable holding the whsec_... secret
      events = ["call.ended"]             # optional; default: every event

A secret is never written in ``agent.toml``: the file names the environment variable that holds
it, which the transcript-writer (the deliverer) must have. The bridge reads the same files and
checks only their shape (:func:`agent_endpoints` with ``env=None``).
"""

from __future__ import annotations

import base64
import binascii
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

WEBHOOK_EVENTS = ("call.started", "call.ended", "call.analyzed")
GLOBAL = "global"
SECRET_PREFIX = "whsec_"
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_KEYS = {"name", "url", "secret_env", "events"}


class WebhookConfigError(ValueError):
    """An endpoint that cannot be used (what is wrong is in the message, never a secret)."""


@dataclass(frozen=True)
class Endpoint:
    """One place webhooks are sent to.

    ``name`` is ``global`` or ``<agent>/<name>``: it keys the deliveries, and with the event id it
    makes each delivery's ``webhook-id``, so keep it when the URL moves. ``agent`` None: every call.
    """

    name: str
    url: str
    secret: str = field(repr=False)
    events: frozenset[str] = frozenset(WEBHOOK_EVENTS)
    agent: str | None = None

    def wants(self, event_type: str, agent: str | None) -> bool:
        return event_type in self.events and (self.agent is None or self.agent == agent)


def check_url(url: str, where: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookConfigError(f"{where}: the webhook URL must be http(s)://host/..., got {url[:80]!r}")
    return url


def check_secret(secret: str, where: str) -> str:
    """A Standard Webhooks secret: ``whsec_`` (optional) and base64 of at least 16 bytes."""
    raw = secret.strip().removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookConfigError(
            f"{where}: the secret must be whsec_ followed by base64 (make one with: python3 -c "
            "'import base64, secrets; print(\"whsec_\" + base64.b64encode(secrets.token_bytes(32)).decode())')"
        ) from None
    if len(key) < 16:
        raise WebhookConfigError(f"{where}: the secret holds {len(key)} bytes; use at least 16 (32 is usual)")
    return secret.strip()


def check_events(events: Any, where: str) -> frozenset[str]:
    if isinstance(events, str):
        events = [e.strip() for e in events.split(",") if e.strip()]
    if not isinstance(events, list | tuple) or not events or not all(isinstance(e, str) for e in events):
        raise WebhookConfigError(f"{where}: events must be a non-empty list of {list(WEBHOOK_EVENTS)}")
    unknown = sorted(set(events) - set(WEBHOOK_EVENTS))
    if unknown:
        raise WebhookConfigError(f"{where}: unknown events {unknown}; known: {list(WEBHOOK_EVENTS)}")
    return frozenset(events)


def agent_endpoints(agent: str, raw: Any, env: Mapping[str, str] | None) -> list[Endpoint]:
    """The endpoints of one agent's ``[[webhooks]]`` (``raw``).

    Args:
        agent: the agent's name (its folder).
        raw: the parsed array of tables.
        env: where ``secret_env`` is looked up; None checks the shape only (secrets left empty).

    Raises:
        WebhookConfigError: a field missing, unknown or invalid, or a named secret not set.
    """
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise WebhookConfigError(f"agent {agent}: webhooks must be an array of tables ([[webhooks]])")
    endpoints: list[Endpoint] = []
    for i, table in enumerate(raw, 1):
        where = f"agent {agent}, webhook {i}"
        unknown = sorted(set(table) - _KEYS)
        if "secret" in table:
            raise WebhookConfigError(f"{where}: write no secret in agent.toml; name its variable in secret_env")
        if unknown:
            raise WebhookConfigError(f"{where}: unknown keys {unknown}; known: {sorted(_KEYS)}")
        name = str(table.get("name", i))
        if not _NAME.fullmatch(name):
            raise WebhookConfigError(f"{where}: name must be 1-64 letters, digits, '_' or '-'")
        url = table.get("url")
        if not isinstance(url, str):
            raise WebhookConfigError(f"{where}: url is required")
        check_url(url, where)
        secret_env = table.get("secret_env")
        if not isinstance(secret_env, str) or not _ENV_NAME.fullmatch(secret_env):
            raise WebhookConfigError(f"{where}: secret_env (the environment variable holding its secret) is required")
        events = check_events(table["events"], where) if "events" in table else frozenset(WEBHOOK_EVENTS)
        secret = ""
        if env is not None:
            if not env.get(secret_env):
                raise WebhookConfigError(f"{where}: its secret variable {secret_env} is not set")
            secret = check_secret(env[secret_env], f"{where} ({secret_env})")
        endpoints.append(Endpoint(f"{agent}/{name}", url, secret, events, agent))
    names = [e.name for e in endpoints]
    if len(set(names)) != len(names):
        raise WebhookConfigError(f"agent {agent}: two webhooks share a name: {sorted(names)}")
    return endpoints


def load_agent_endpoints(agents_dir: Path, env: Mapping[str, str]) -> list[Endpoint]:
    """Every agent's endpoints, from ``<agents_dir>/<agent>/agent.toml``; none without the folder."""
    if not agents_dir.is_dir():
        return []
    endpoints: list[Endpoint] = []
    for path in sorted(agents_dir.glob("*/agent.toml")):
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise WebhookConfigError(f"{path}: {exc}") from exc
        if "webhooks" in raw:
            endpoints += agent_endpoints(path.parent.name, raw["webhooks"], env)
    return endpoints
