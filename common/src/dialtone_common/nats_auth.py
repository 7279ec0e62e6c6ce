"""Who may do what on the bus: the NATS users of the five services and their permissions.

This module is the only place the permissions are written down. ``render_config`` turns them into
the ``authorization`` block of a nats-server configuration:

- for deployments (``deploy/nats/nats.conf``, the Helm values in ``deploy/k8s/nats/values.yaml``)
  every password is a reference to an environment variable of the NATS server
  (``password: $GATEWAY_NATS_PASSWORD``), so the checked-in files hold no secret; a test renders
  them again from this module and compares;
- for the embedded server of ``make run``, the end-to-end tests and the benchmark
  (``dialtone_common.embedded``), every password is drawn anew per run and written into a file
  readable by its owner only.

Each service connects as its own user (``NATS_USER`` / ``NATS_PASSWORD``) and gets the inbox
prefix ``_INBOX.<user>`` (``inbox_prefix``), so the replies it waits for can be subscribed to by
itself alone. A service that answers requests (the bridge answers call offers, the tool-runner
tool calls and ``$SRV`` discovery) has ``allow_responses``: it may publish to the reply subject of a
request it received, and nowhere else besides its list.

What each service really does on the bus, and so may do (read from the code; see docs/SECURITY.md):

- media-gateway: offers calls (request ``dt.v1.calls.offer``, or ``.offer.<bridge>`` to the bridge
  that prepared the call), announces them at the webhook (``dt.v1.calls.prepare``), publishes caller audio and control
  (``dt.v1.call.*.*.in``), hears the agent's side (``.out``), publishes call events (status
  callbacks, ``call.ended``), keeps the calls bucket (``$KV.dialtone_calls``); while draining asks
  the other gateways whether one is ready (``dt.v1.gateways.ready``), and answers that question.
- realtime-bridge: takes offers (queue subscription, answers them), hears ``.in``, publishes
  ``.out``, live heartbeats and call events, asks the tool-runner (tools and ``$SRV.PING``), reads
  a call's past events when it takes over a call (ordered consumer), keeps the calls bucket.
- tool-runner: a ``nats.micro`` service: hears its two endpoints and ``$SRV`` discovery, answers
  them; publishes nothing else, hears no audio, no event.
- transcript-writer: consumes the event stream with a durable pull consumer; its recorder hears
  both sides of every call (never publishes audio), watches the calls bucket (read only) and keeps
  its own bucket of claims; its sweeper hears heartbeats. It publishes four event types only:
  ``call.status`` and ``call.ended`` (the sweeper closing a call whose end was never reported),
  ``call.metric`` (whether a recording is whole) and ``call.analyzed`` (the post-call analysis).
- admin-api: hears events, heartbeats and, for the dashboard's listen-in, both sides of a call's
  audio; publishes nothing on the call subjects and no event (outbound calls go to Twilio's REST
  API, not the bus); keeps its own bucket of dashboard sign-ins (``$KV.dialtone_admin_signins``);
  asks a test worker to start a test run (``dt.v1.eval.start``) and hears the runs' progress.

And the test worker (``eval``, :data:`EVAL_WORKER`), which places the dashboard's test calls: it
takes run requests (queue subscription, answers them) and publishes their progress, nothing else
(its calls go through the gateway's webhook like Twilio's). It runs beside ``make run`` and the
tests (in-process) and, in a deployment, as its own process (``dialtone eval-worker``), so it is a
user of the deployment's configuration too (:data:`DEPLOYED_USERS`).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dialtone_proto import STREAM_NAME, subjects

API = "$JS.API"
SRV = "$SRV"
EVENTS_STREAM = STREAM_NAME
CALLS_KV_STREAM = f"KV_{subjects.CALLS_BUCKET}"
RECORDINGS_KV_STREAM = f"KV_{subjects.RECORDINGS_BUCKET}"

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}\Z")


@dataclass(frozen=True)
class User:
    """One NATS user: its name, the environment variable holding its password on the NATS server
    (deployments), and what it may publish and subscribe to. ``publish`` empty: nothing (besides
    replies, with ``allow_responses``)."""

    name: str
    service: str
    password_env: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"invalid NATS user name {self.name!r}")


def inbox_prefix(user: str) -> str:
    """The inbox prefix of ``user``'s connections: replies to it arrive under ``_INBOX.<user>.``."""
    return f"_INBOX.{user}"


def _inbox(user: str) -> str:
    return f"{inbox_prefix(user)}.>"


def _stream_admin(stream: str) -> tuple[str, ...]:
    """Look a stream up and create or update it (``bus.ensure_stream``, ``ensure_calls_bucket``,
    ``js.key_value``)."""
    return (f"{API}.STREAM.INFO.{stream}", f"{API}.STREAM.CREATE.{stream}", f"{API}.STREAM.UPDATE.{stream}")


def _stream_read(stream: str) -> tuple[str, ...]:
    """Read one message of a stream (KV get, ``get_last_msg``), direct or through the API."""
    return (f"{API}.STREAM.MSG.GET.{stream}", f"{API}.DIRECT.GET.{stream}", f"{API}.DIRECT.GET.{stream}.>")


def _ordered_consumer(stream: str) -> tuple[str, ...]:
    """An ephemeral ordered push consumer (KV watch, reading a call's past events): create it,
    look it up, recreate it after a gap, delete it, answer its flow control."""
    return (f"{API}.CONSUMER.CREATE.{stream}", f"{API}.CONSUMER.CREATE.{stream}.>",
            f"{API}.CONSUMER.INFO.{stream}.*", f"{API}.CONSUMER.DELETE.{stream}.*", f"$JS.FC.{stream}.>")


def _kv_write(bucket: str) -> tuple[str, ...]:
    return (f"$KV.{bucket}.>",)


def _durable_pull_consumer(stream: str) -> tuple[str, ...]:
    """A durable pull consumer (the writer's; its name is the ``DURABLE_NAME`` setting): look it up,
    create it, fetch, acknowledge."""
    return (f"{API}.CONSUMER.INFO.{stream}.*", f"{API}.CONSUMER.CREATE.{stream}.>",
            f"{API}.CONSUMER.DURABLE.CREATE.{stream}.*", f"{API}.CONSUMER.MSG.NEXT.{stream}.*",
            f"$JS.ACK.{stream}.>")


def _service_discovery(service: str) -> tuple[str, ...]:
    """What ``nats.micro`` subscribes to for discovery (PING, INFO, STATS; all, by name, by id)."""
    return tuple(s for verb in ("PING", "INFO", "STATS")
                 for s in (f"{SRV}.{verb}", f"{SRV}.{verb}.{service}", f"{SRV}.{verb}.{service}.*"))


GATEWAY = User(
    name="gateway", service="media-gateway", password_env="GATEWAY_NATS_PASSWORD",
    publish=(
        subjects.CALL_OFFER, f"{subjects.CALL_OFFER}.*", subjects.CALL_OFFER_ANY, subjects.CALL_PREPARE,
        subjects.CALL_IN_ALL, subjects.CALL_REC_ALL, subjects.EVENTS_ALL, *_stream_admin(EVENTS_STREAM),
        *_stream_admin(CALLS_KV_STREAM), *_stream_read(CALLS_KV_STREAM), *_kv_write(subjects.CALLS_BUCKET),
        subjects.GATEWAYS_READY,
    ),
    subscribe=(subjects.CALL_OUT_ALL, _inbox("gateway"), subjects.GATEWAYS_READY),
    allow_responses=True,  # answers whether it is ready (a draining gateway asks before moving calls)
)

BRIDGE = User(
    name="bridge", service="realtime-bridge", password_env="BRIDGE_NATS_PASSWORD",
    publish=(
        subjects.CALL_OUT_ALL, subjects.LIVE_ALL, subjects.EVENTS_ALL,
        subjects.TOOLS_CATALOG, subjects.TOOLS_CALL, f"{SRV}.PING.{subjects.TOOLS_SERVICE}",
        *_stream_admin(EVENTS_STREAM), *_stream_read(EVENTS_STREAM), *_ordered_consumer(EVENTS_STREAM),
        *_stream_admin(CALLS_KV_STREAM), *_stream_read(CALLS_KV_STREAM), *_kv_write(subjects.CALLS_BUCKET),
    ),
    subscribe=(subjects.CALL_OFFER, f"{subjects.CALL_OFFER}.*", subjects.CALL_OFFER_ANY, subjects.CALL_PREPARE,
               subjects.CALL_IN_ALL, _inbox("bridge")),
    allow_responses=True,  # answers call offers
)

TOOLS = User(
    name="tools", service="tool-runner", password_env="TOOLS_NATS_PASSWORD",
    publish=(),
    subscribe=(subjects.TOOLS_CATALOG, subjects.TOOLS_CALL, *_service_discovery(subjects.TOOLS_SERVICE)),
    allow_responses=True,  # answers tool calls and discovery
)

WRITER = User(
    name="writer", service="transcript-writer", password_env="WRITER_NATS_PASSWORD",
    publish=(
        *(subjects.events_of_type(t) for t in ("call.status", "call.ended", "call.metric", "call.analyzed")),
        *_stream_admin(EVENTS_STREAM), *_durable_pull_consumer(EVENTS_STREAM),
        *_stream_admin(CALLS_KV_STREAM), *_stream_read(CALLS_KV_STREAM), *_ordered_consumer(CALLS_KV_STREAM),
        *_stream_admin(RECORDINGS_KV_STREAM), *_stream_read(RECORDINGS_KV_STREAM),
        *_kv_write(subjects.RECORDINGS_BUCKET),
    ),
    # The recorder hears each call through the gateway's tap only, not its 20 ms frames.
    subscribe=(subjects.CALL_REC_ALL, subjects.LIVE_ALL, _inbox("writer")),
)

ADMIN_SIGNINS_KV_STREAM = f"KV_{subjects.ADMIN_SIGNINS_BUCKET}"

ADMIN = User(
    name="admin", service="admin-api", password_env="ADMIN_NATS_PASSWORD",
    # Its own bucket of dashboard sign-ins only: nothing on the call subjects, no event.
    publish=(
        *_stream_admin(ADMIN_SIGNINS_KV_STREAM), *_stream_read(ADMIN_SIGNINS_KV_STREAM),
        *_ordered_consumer(ADMIN_SIGNINS_KV_STREAM), *_kv_write(subjects.ADMIN_SIGNINS_BUCKET),
        subjects.EVAL_START,
    ),
    subscribe=(subjects.EVENTS_ALL, subjects.LIVE_ALL, subjects.CALL_IN_ALL, subjects.CALL_OUT_ALL,
               subjects.EVAL_PROGRESS_ALL, _inbox("admin")),
)

EVAL_WORKER = User(
    name="eval", service="eval-worker", password_env="EVAL_NATS_PASSWORD",
    publish=(subjects.EVAL_PROGRESS_ALL,),
    subscribe=(subjects.EVAL_START, _inbox("eval")),
    allow_responses=True,  # answers run requests
)

# The users of the five services, by service name.
SERVICE_USERS: dict[str, User] = {u.service: u for u in (GATEWAY, BRIDGE, TOOLS, WRITER, ADMIN)}

# The users of a deployment's NATS server (deploy/nats/nats.conf, the Helm values): the five
# services' and the test worker's.
DEPLOYED_USERS: tuple[User, ...] = (*SERVICE_USERS.values(), EVAL_WORKER)

# The embedded server's own user for test harnesses and developer tools that watch or drive the bus
# directly (the contract test hears everything). It exists only in the configuration the embedded
# server of a development or test run is given, with a password drawn for that run; never in a
# deployment's.
HARNESS = User(
    name="dev-harness", service="", password_env="DEV_HARNESS_NATS_PASSWORD",
    publish=(">",), subscribe=(">",), allow_responses=True,
)


def _quote(text: str) -> str:
    if any(c in text for c in '"\\\n\r'):
        raise ValueError(f"cannot quote {text!r} in a NATS configuration")
    return f'"{text}"'


def _list(items: Iterable[str]) -> str:
    return "[" + ", ".join(_quote(i) for i in items) + "]"


def render_config(users: Iterable[User] | None = None, passwords: Mapping[str, str] | None = None) -> str:
    """The ``authorization`` block of a nats-server configuration for ``users`` (default: a
    deployment's, :data:`DEPLOYED_USERS`).

    Args:
        users: the users to render.
        passwords: each user's password by user name, written into the configuration (the
            embedded server's file, private to its owner). Without it every password is a
            reference to the user's environment variable (``password_env``), resolved by the NATS
            server when it starts; a missing variable stops it.

    Raises:
        ValueError: a user without a password in ``passwords``, or a password unfit for the file.
    """
    users = list(DEPLOYED_USERS if users is None else users)
    names = [u.name for u in users]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate NATS users: {names}")
    out = [
        "# Generated from dialtone_common.nats_auth (python -m dialtone_common.nats_auth); do not edit.",
        "authorization {",
        "  users = [",
    ]
    for user in users:
        if passwords is None:
            password = f"${user.password_env}"
        else:
            secret = passwords.get(user.name)
            if not secret or len(secret) < 16:
                raise ValueError(f"NATS user {user.name}: no password, or one shorter than 16 characters")
            password = _quote(secret)
        publish = f"{{allow: {_list(user.publish)}}}" if user.publish else '{deny: [">"]}'
        out += [
            "    {",
            f"      user: {_quote(user.name)}",
            f"      password: {password}",
            "      permissions: {",
            f"        publish: {publish}",
            f"        subscribe: {{allow: {_list(user.subscribe)}}}",
        ]
        if user.allow_responses:
            out.append("        allow_responses: true")
        out += ["      }", "    }"]
    out += ["  ]", "}", ""]
    return "\n".join(out)


def helm_values(users: Iterable[User] | None = None) -> dict:
    """The same users as values of the official NATS Helm chart: ``config.merge.authorization``
    (passwords as ``<< $VAR >>``, which the chart writes unquoted, so NATS reads the variable) and
    ``container.env`` (each variable from the Secret ``dialtone-nats``, key ``<user>-password``)."""
    users = list(DEPLOYED_USERS if users is None else users)
    entries = []
    for user in users:
        permissions: dict = {
            "publish": {"allow": list(user.publish)} if user.publish else {"deny": [">"]},
            "subscribe": {"allow": list(user.subscribe)},
        }
        if user.allow_responses:
            permissions["allow_responses"] = True
        entries.append({"user": user.name, "password": f"<< ${user.password_env} >>", "permissions": permissions})
    env = {u.password_env: {"valueFrom": {"secretKeyRef": {"name": K8S_SECRET, "key": secret_key(u)}}}
           for u in users}
    return {"config": {"merge": {"authorization": {"users": entries}}}, "container": {"env": env}}


# The Kubernetes Secret of the NATS passwords (created by the operator, never kept in the repository).
K8S_SECRET = "dialtone-nats"


def secret_key(user: User) -> str:
    """The key of ``user``'s password in the Secret ``dialtone-nats``."""
    return f"{user.name}-password"


@dataclass(frozen=True)
class RunCredentials:
    """The passwords of one run of the embedded NATS server (``make run``, tests, the benchmark):
    drawn anew for every user of the five services and for ``dev-harness``. Never printed: the
    repr names the users only."""

    passwords: Mapping[str, str] = field(repr=False)

    @classmethod
    def generate(cls) -> RunCredentials:
        return cls({u.name: secrets.token_urlsafe(24) for u in (*SERVICE_USERS.values(), EVAL_WORKER, HARNESS)})

    def users(self) -> list[User]:
        return [*SERVICE_USERS.values(), EVAL_WORKER, HARNESS]

    def config(self) -> str:
        """The ``authorization`` block with these passwords written in (for a file private to its owner)."""
        return render_config(self.users(), self.passwords)

    def env(self, service: str) -> dict[str, str]:
        """``NATS_USER`` and ``NATS_PASSWORD`` of ``service`` (``media-gateway``, ...)."""
        try:
            user = SERVICE_USERS[service]
        except KeyError:
            raise ValueError(f"no NATS user for service {service!r}; known: {sorted(SERVICE_USERS)}") from None
        return {"NATS_USER": user.name, "NATS_PASSWORD": self.passwords[user.name]}

    def connect_options(self, user: str = HARNESS.name) -> dict[str, str]:
        """``user``, ``password`` and ``inbox_prefix`` for ``nats.connect`` as ``user`` (default: the harness)."""
        if user not in self.passwords:
            raise ValueError(f"no NATS user {user!r}; known: {sorted(self.passwords)}")
        return {"user": user, "password": self.passwords[user], "inbox_prefix": inbox_prefix(user)}


def main(argv: list[str] | None = None) -> None:
    """Print deploy/nats/nats.conf, or with ``--helm`` the parts of deploy/k8s/nats/values.yaml
    made from the users (``config.merge.authorization``, ``container.env``) to paste there."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m dialtone_common.nats_auth", description=main.__doc__)
    parser.add_argument("--helm", action="store_true", help="the NATS Helm chart's values instead")
    args = parser.parse_args(argv)
    if args.helm:
        import yaml

        print(yaml.safe_dump(helm_values(), sort_keys=False, width=200), end="")
    else:
        print(render_config(), end="")


if __name__ == "__main__":
    main()
