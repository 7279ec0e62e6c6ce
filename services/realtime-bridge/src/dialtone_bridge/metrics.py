"""Prometheus metrics of the realtime-bridge, in the bridge's own registry (served on ``/metrics``).

Labels stay low-cardinality: agent, direction, reason, outcome, code, kind; never a call id. The
per-frame counters carry no labels, so the audio path does no label lookups.
"""

import re

from dialtone_common.metrics import TRANSIT_BUCKETS, service_registry
from prometheus_client import Counter, Gauge, Histogram

REGISTRY = service_registry()

# Turn latency is judged against 1.5 s (the alert); the buckets are fine around it.
_LATENCY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9, 1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 7.5, 10)

READY = Gauge(
    "dialtone_bridge_ready", "1 while this bridge takes new calls (NATS connected, not draining, not full)",
    registry=REGISTRY,
)
CALLS_ACTIVE = Gauge(
    "dialtone_bridge_calls_active", "Calls this bridge is running now", ["agent", "direction"], registry=REGISTRY
)
CALLS_STARTED = Counter(
    "dialtone_bridge_calls_started_total", "Calls this bridge started serving (takeovers included)",
    ["agent", "direction"], registry=REGISTRY,
)
CALLS_ENDED = Counter(
    "dialtone_bridge_calls_ended_total",
    "Calls this bridge finished, by end reason and outcome (``none`` when the agent set none)",
    ["agent", "direction", "reason", "outcome"], registry=REGISTRY,
)
OFFERS = Counter("dialtone_bridge_offers_total", "Call offers answered", ["result"], registry=REGISTRY)
FRAMES_IN = Counter(
    "dialtone_bridge_audio_frames_in_total", "Caller audio frames forwarded to the model", registry=REGISTRY
)
FRAMES_OUT = Counter(
    "dialtone_bridge_audio_frames_out_total", "Agent audio frames sent towards the caller", registry=REGISTRY
)
AUDIO_DROPPED = Counter(
    "dialtone_bridge_audio_dropped_bytes_total",
    "Caller audio bytes dropped because the model socket was not ready and the backlog was full",
    registry=REGISTRY,
)
AUDIO_OUT = Counter("dialtone_bridge_audio_out_bytes_total", "Agent audio bytes sent to the caller", registry=REGISTRY)
BUS_TRANSIT = Histogram(
    "dialtone_bridge_bus_transit_seconds",
    "Gateway to bridge: a frame's sent time in its header (the gateway's wall clock) to its arrival here",
    buckets=TRANSIT_BUCKETS, registry=REGISTRY,
)
BAD_FRAMES = Counter("dialtone_bridge_bad_frames_total", "Malformed frames from the bus", registry=REGISTRY)
REALTIME_ERRORS = Counter("dialtone_bridge_realtime_errors_total", "Realtime error events", ["code"], registry=REGISTRY)
RECONNECTS = Counter(
    "dialtone_bridge_realtime_reconnects_total", "Realtime sockets re-opened mid-call", ["cause"], registry=REGISTRY
)
BARGE_INS = Counter("dialtone_bridge_barge_ins_total", "Caller interruptions that cut agent audio", registry=REGISTRY)
TRUNCATES_REFUSED = Counter(
    "dialtone_bridge_truncates_refused_total", "Truncates of interrupted agent audio the model refused",
    registry=REGISTRY,
)
TURN_SECONDS = Histogram(
    "dialtone_bridge_turn_latency_seconds",
    "The caller stopped speaking (the model's speech_stopped, bridge clock) to the reply's first audio sent to Twilio",
    buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
TURN_HEARD_SECONDS = Histogram(
    "dialtone_bridge_turn_heard_latency_seconds",
    "The caller stopped speaking to the reply's first audio played to the caller (its mark echoed back)",
    buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
GREETING_SECONDS = Histogram(
    "dialtone_bridge_greeting_latency_seconds", "Stream start to the first audio of the agent's greeting",
    buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
FIRST_AUDIO_SECONDS = Histogram(
    "dialtone_bridge_first_audio_seconds", "Stream start to the agent's first audio",
    buckets=(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10), registry=REGISTRY,
)
TOOL_SECONDS = Histogram(
    "dialtone_bridge_tool_seconds", "Tool call round trip as seen by the bridge", ["tool"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=REGISTRY,
)
RESPONSES = Counter(
    "dialtone_bridge_realtime_responses_total", "Model responses by final status", ["status"], registry=REGISTRY
)
TOKENS = Counter(
    "dialtone_bridge_realtime_tokens_total",
    "Model tokens used, by kind (text_in, text_cached, audio_in, audio_cached, text_out, audio_out)",
    ["kind"], registry=REGISTRY,
)
COST = Counter(
    "dialtone_bridge_realtime_cost_dollars_total", "Model cost in US dollars at the configured prices, by token kind",
    ["kind"], registry=REGISTRY,
)
UNTRANSCRIBED = Counter(
    "dialtone_bridge_untranscribed_lines_total", "Caller lines whose words have no text", registry=REGISTRY
)
RATE_LIMIT_REMAINING = Gauge(
    "dialtone_bridge_realtime_rate_limit_remaining", "OpenAI account rate limit left, as last reported", ["name"],
    registry=REGISTRY,
)
RECOVERED = Counter(
    "dialtone_bridge_calls_recovered_total",
    "Calls taken over from another bridge: lost (fell silent) or handoff (it drained)", ["cause"], registry=REGISTRY,
)
EVENTS = Counter("dialtone_bridge_events_published_total", "Call events published", ["type"], registry=REGISTRY)
EVENT_RETRIES = Counter("dialtone_bridge_event_publish_retries_total", "Event publish retries", registry=REGISTRY)
EVENTS_LOST = Counter(
    "dialtone_bridge_events_lost_total", "Events given up on after retrying", registry=REGISTRY
)

_OUTCOME = re.compile(r"[a-z][a-z0-9_]{0,31}")


def outcome_label(outcome: str | None) -> str:
    """The ``outcome`` label: ``none`` when unset; the model chooses outcomes, so anything but a
    short snake_case word (what ``set_outcome`` asks for) is ``other``, keeping the label set small."""
    if not outcome:
        return "none"
    return outcome if _OUTCOME.fullmatch(outcome) else "other"


def start_at_zero(agents: list[str]) -> None:
    """Create the series known in advance at zero: a labelled series exists only from its first
    increment, which rate() and increase() never see (a bridge's first call would not count)."""
    for agent in agents:
        for direction in ("inbound", "outbound"):
            CALLS_STARTED.labels(agent, direction)
            CALLS_ACTIVE.labels(agent, direction)
    for result in ("accepted", "draining", "full", "unconfirmed", "busy", "unavailable"):
        OFFERS.labels(result)
    for cause in ("lost", "handoff"):
        RECOVERED.labels(cause)
CALLS_MOVED = Counter(
    "dialtone_bridge_calls_moved_total",
    "Calls whose Twilio stream moved to another gateway while this bridge kept them", registry=REGISTRY,
)
MOVE_REPLAYED = Histogram(
    "dialtone_bridge_move_replayed_seconds",
    "Agent audio a moved call's old stream had not played, sent again to the new one",
    buckets=(0, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30), registry=REGISTRY,
)
PREPARED = Counter(
    "dialtone_bridge_prepared_sessions_total",
    "Model sessions opened at a call's voice webhook, before its stream, by what became of them: used "
    "(its call came here), failed (it did not open), expired (no call came within PREPARE_TTL_S) or "
    "unused (the call went to another bridge or agent)",
    ["result"], registry=REGISTRY,
)
WARM_SOCKETS = Counter(
    "dialtone_bridge_warm_sockets_total",
    "Warm Realtime sockets (REALTIME_WARM_SOCKETS) by what became of them: used (a call took one), "
    "missed (a call found none ready), expired (closed by age or by the server before use) or failed "
    "(could not be opened)",
    ["result"],
    registry=REGISTRY,
)
for _result in ("used", "missed", "expired", "failed"):
    WARM_SOCKETS.labels(_result)
WARM_READY = Gauge(
    "dialtone_bridge_warm_sockets_ready",
    "Warm Realtime sockets open and waiting for a call",
    registry=REGISTRY,
)
for _result in ("used", "failed", "expired", "unused"):
    PREPARED.labels(_result)
