"""What every call on a bridge shares: its connections, settings, agents and tools."""

from __future__ import annotations

from dataclasses import dataclass

from dialtone_common.callbook import CallBook
from dialtone_common.coalesce import Coalescer
from nats.aio.client import Client
from nats.js import JetStreamContext

from dialtone_bridge.agents import AgentBook
from dialtone_bridge.realtime_warm import WarmSockets
from dialtone_bridge.settings import BridgeSettings
from dialtone_bridge.toolclient import ToolClient
from dialtone_bridge.twilio_line import TwilioControlFactory


@dataclass
class BridgeContext:
    """What every call on this bridge shares."""

    nc: Client
    js: JetStreamContext
    settings: BridgeSettings
    agents: AgentBook
    tools: ToolClient
    bridge_id: str
    twilio: TwilioControlFactory | None = None
    calls: CallBook | None = None  # the call records: who holds each call now
    bus: Coalescer | None = None  # every call's frames to its gateway, coalesced into few writes
    warm: WarmSockets | None = None  # Realtime sockets opened ahead of calls (REALTIME_WARM_SOCKETS)

    def __post_init__(self) -> None:
        if self.bus is None:
            self.bus = Coalescer(self.nc)
