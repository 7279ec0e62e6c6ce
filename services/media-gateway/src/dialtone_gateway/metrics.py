"""Prometheus metrics of the media-gateway."""

from prometheus_client import Counter, Gauge, Histogram

STREAMS_ACTIVE = Gauge("dialtone_gateway_streams_active", "Media Streams sockets open now")
STREAMS_TOTAL = Counter("dialtone_gateway_streams_total", "Media Streams sockets accepted")
SOCKETS_REFUSED = Counter("dialtone_gateway_sockets_refused_total", "Upgrades refused", ["reason"])
WEBHOOKS = Counter("dialtone_gateway_webhooks_total", "Twilio webhooks", ["endpoint", "result"])
MESSAGES_IN = Counter("dialtone_gateway_messages_in_total", "Twilio messages received", ["event"])
BAD_MESSAGES = Counter("dialtone_gateway_bad_messages_total", "Malformed or unexpected Twilio messages", ["reason"])
MESSAGES_OUT = Counter("dialtone_gateway_messages_out_total", "Messages sent to Twilio", ["event"])
AUDIO_OUT_BYTES = Counter("dialtone_gateway_audio_out_bytes_total", "Agent audio bytes sent to Twilio")
BAD_FRAMES = Counter("dialtone_gateway_bad_frames_total", "Malformed frames from the bus")
CLAIMS = Counter("dialtone_gateway_claims_total", "Call offers to the bridges", ["result"])
CLAIM_SECONDS = Histogram(
    "dialtone_gateway_claim_seconds", "Time for a bridge to claim a call",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BRIDGE_LOST = Counter("dialtone_gateway_bridge_lost_total", "Calls whose bridge fell silent and were re-offered")
RESCUES = Counter(
    "dialtone_gateway_rescues_total", "Calls no bridge would take: Twilio apologised and hung up"
)
FRAMES_DROPPED = Counter(
    "dialtone_gateway_frames_dropped_total", "Caller frames that could not be sent to the bus", ["reason"]
)
