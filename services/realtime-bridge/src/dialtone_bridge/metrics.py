"""Prometheus metrics of the realtime-bridge."""

from prometheus_client import Counter, Gauge, Histogram

CALLS_ACTIVE = Gauge("dialtone_bridge_calls_active", "Calls this bridge is running now")
CALLS = Counter("dialtone_bridge_calls_total", "Calls finished", ["reason"])
OFFERS = Counter("dialtone_bridge_offers_total", "Call offers answered", ["result"])
FRAMES_IN = Counter("dialtone_bridge_audio_frames_in_total", "Caller audio frames forwarded to the model")
AUDIO_OUT = Counter("dialtone_bridge_audio_out_bytes_total", "Agent audio bytes sent to the caller")
REALTIME_ERRORS = Counter("dialtone_bridge_realtime_errors_total", "Realtime error events", ["code"])
RECONNECTS = Counter("dialtone_bridge_realtime_reconnects_total", "Realtime sockets re-opened mid-call", ["cause"])
BARGE_INS = Counter("dialtone_bridge_barge_ins_total", "Caller interruptions that cut agent audio")
TOOL_SECONDS = Histogram(
    "dialtone_bridge_tool_seconds", "Tool call round trip as seen by the bridge", ["tool"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
FIRST_AUDIO_SECONDS = Histogram(
    "dialtone_bridge_first_audio_seconds", "Stream start to the agent's first audio",
    buckets=(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10),
)
BAD_FRAMES = Counter("dialtone_bridge_bad_frames_total", "Malformed frames from the bus")
RESPONSES = Counter("dialtone_bridge_realtime_responses_total", "Model responses by final status", ["status"])
UNTRANSCRIBED = Counter("dialtone_bridge_untranscribed_lines_total", "Caller lines whose words have no text")
RATE_LIMIT_REMAINING = Gauge(
    "dialtone_bridge_realtime_rate_limit_remaining", "OpenAI account rate limit left, as last reported", ["name"]
)
RECOVERED = Counter("dialtone_bridge_calls_recovered_total", "Calls taken over from a lost bridge")
