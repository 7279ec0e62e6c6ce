"""NATS subject builders: the only place subject strings are spelled.

Layout (all under ``dt.v1``):

- ``dt.v1.calls.offer``            request/reply; a media-gateway offers a new call, one bridge of the
                                   ``realtime-bridge`` queue group claims it.
- ``dt.v1.calls.offer.<bridge>``     the same offer to one bridge: the one that prepared the call.
- ``dt.v1.calls.offer-any``        the same offer to every bridge at once, after an offer to the
                                   queue group went unanswered: the group may hold a bridge that is
                                   frozen (stopped, swapping) and still draws its share of offers.
                                   The bridge that wins the call record answers; the others say
                                   nothing.
- ``dt.v1.calls.prepare``          core NATS, gateway -> one bridge of the queue group: a voice webhook
                                   arrived; open the call's model session now.
- ``dt.v1.call.<call_id>.<key>.in``  core NATS, gateway -> bridge: caller audio and control frames.
- ``dt.v1.call.<call_id>.<key>.out`` core NATS, bridge -> gateway: agent audio, control, heartbeats.
                                   ``key`` is the stream key: a random token the gateway stream
                                   holding the call draws (and draws anew when it re-offers the
                                   call), so only that stream and the bridge it offered the call to
                                   share the subjects; frames from anyone else reach no one.
- ``dt.v1.call.<call_id>.<key>.rec`` core NATS, gateway -> recorder: both sides' frames in batches,
                                   a few a second, as the gateway saw them (the recorder's tap).
- ``dt.v1.events.<call_id>.<type>`` JetStream stream ``DIALTONE_EVENTS``: durable call events.
- ``dt.v1.tools.catalog`` / ``dt.v1.tools.call``  the tool-runner's ``nats.micro`` endpoints.
- ``dt.v1.live.<call_id>``         core NATS heartbeat of a live call (for the admin live view).
"""

import re

PREFIX = "dt.v1"
CALL_OFFER = f"{PREFIX}.calls.offer"
CALL_OFFER_ANY = f"{PREFIX}.calls.offer-any"
# A voice webhook arrived: a bridge may open the model session now, while Twilio sets up the stream.
CALL_PREPARE = f"{PREFIX}.calls.prepare"
# A draining gateway asks whether another gateway is ready before moving its calls; every ready
# (not draining) gateway answers ``GatewayReady``.
GATEWAYS_READY = f"{PREFIX}.gateways.ready"
BRIDGE_QUEUE = "realtime-bridge"
TOOLS_SERVICE = "dialtone-tools"
TOOLS_GROUP = f"{PREFIX}.tools"
TOOLS_CATALOG = f"{TOOLS_GROUP}.catalog"
TOOLS_CALL = f"{TOOLS_GROUP}.call"
EVENTS_ALL = f"{PREFIX}.events.>"

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")  # \Z: "$" would accept a trailing newline


class InvalidCallId(ValueError):
    """A call id that cannot be a NATS subject token."""


def check_call_id(call_id: str) -> str:
    """Return ``call_id`` if it is safe as one subject token, else raise ``InvalidCallId``."""
    if not isinstance(call_id, str) or not _TOKEN.match(call_id):
        raise InvalidCallId(f"invalid call id {call_id!r}")
    return call_id


def check_stream_key(key: str) -> str:
    """Return ``key`` if it is safe as one subject token, else raise ``InvalidCallId``."""
    if not isinstance(key, str) or not _TOKEN.match(key):
        raise InvalidCallId(f"invalid stream key {key!r}")
    return key


def bridge_offer(bridge_id: str) -> str:
    """The offer subject of one bridge: the call goes first to the bridge that prepared its session."""
    return f"{CALL_OFFER}.{check_call_id(bridge_id)}"


def call_in(call_id: str, key: str) -> str:
    """Caller audio and control, gateway -> bridge, of the stream holding the call under ``key``."""
    return f"{PREFIX}.call.{check_call_id(call_id)}.{check_stream_key(key)}.in"


def call_out(call_id: str, key: str) -> str:
    """Agent audio, control and heartbeats, bridge -> gateway."""
    return f"{PREFIX}.call.{check_call_id(call_id)}.{check_stream_key(key)}.out"


def call_rec(call_id: str, key: str) -> str:
    """The recorder's tap, gateway -> recorder: the call's frames both ways in batches
    (``dialtone_proto.frames.decode_tap``)."""
    return f"{PREFIX}.call.{check_call_id(call_id)}.{check_stream_key(key)}.rec"


def event(call_id: str, event_type: str) -> str:
    """JetStream subject of one call event; the type's dots become underscores."""
    return f"{PREFIX}.events.{check_call_id(call_id)}.{event_type.replace('.', '_')}"


def live(call_id: str) -> str:
    """Heartbeat of a live call."""
    return f"{PREFIX}.live.{check_call_id(call_id)}"


LIVE_ALL = f"{PREFIX}.live.*"

# Test runs started from the dashboard (dialtone_proto.evals): the admin API's request to a test
# worker, and each run's progress.
EVAL_START = f"{PREFIX}.eval.start"
EVAL_QUEUE = "dialtone-eval"
EVAL_PROGRESS_ALL = f"{PREFIX}.eval.progress.*"


def eval_progress(run_id: str) -> str:
    """Progress of one test run (its id is a subject token)."""
    if not _TOKEN.match(run_id) or "." in run_id:
        raise ValueError(f"invalid test run id {run_id!r}")
    return f"{PREFIX}.eval.progress.{run_id}"

# NATS KV bucket of calls, keyed by call id: what the signed voice webhook said about the call
# (from, to, direction, agent, variables), then which gateway stream holds it under which key.
CALLS_BUCKET = "dialtone_calls"

# NATS KV bucket of the transcript-writer's recorders: which recorder holds each call, and each
# recorder's "alive" beat.
RECORDINGS_BUCKET = "dialtone_recordings"

# NATS KV bucket of the admin API's dashboard sign-ins (one entry per session cookie), shared by
# every admin API instance.
ADMIN_SIGNINS_BUCKET = "dialtone_admin_signins"

# Wildcards over the subjects above, for NATS permissions (``dialtone_common.nats_auth``) and
# listeners: every call's caller side (``.in``) and agent side (``.out``), and every event.
CALL_IN_ALL = f"{PREFIX}.call.*.*.in"
CALL_OUT_ALL = f"{PREFIX}.call.*.*.out"
CALL_REC_ALL = f"{PREFIX}.call.*.*.rec"


def events_of_type(event_type: str) -> str:
    """Every call's events of one type (``call.status`` -> ``dt.v1.events.*.call_status``)."""
    if not isinstance(event_type, str) or not _TOKEN.match(event_type.replace(".", "_")):
        raise ValueError(f"invalid event type {event_type!r}")
    return f"{PREFIX}.events.*.{event_type.replace('.', '_')}"
