"""Start the realtime-bridge: ``python -m dialtone_bridge``."""

from __future__ import annotations

import asyncio
import logging
import uuid
from contextlib import AsyncExitStack

from dialtone_common import bus, logs, runtime
from dialtone_common.callbook import CallBook
from dialtone_common.health import HealthServer

from dialtone_bridge import metrics as m
from dialtone_bridge.agents import AgentBook
from dialtone_bridge.context import BridgeContext
from dialtone_bridge.realtime_warm import WarmSockets
from dialtone_bridge.service import Bridge
from dialtone_bridge.settings import BridgeSettings
from dialtone_bridge.toolclient import ToolClient

log = logging.getLogger("dialtone.bridge")


async def serve(stack: AsyncExitStack, stop: asyncio.Event, settings: BridgeSettings) -> Bridge:
    bridge_id = settings.instance_id or f"bridge-{uuid.uuid4().hex[:8]}"
    agents = AgentBook.load(settings.agents_dir)
    nc = await bus.connect(settings.nats_servers(), name=bridge_id, **settings.nats_credentials())
    stack.push_async_callback(bus.close, nc)
    js = nc.jetstream()
    await bus.ensure_stream(js, replicas=settings.jetstream_replicas)
    twilio = None
    if settings.twilio_account_sid and settings.twilio_auth_token:
        from dialtone_bridge.twilio_line import TwilioControlFactory

        twilio = TwilioControlFactory(settings)
        stack.push_async_callback(twilio.close)
    calls = CallBook(await bus.ensure_calls_bucket(js, replicas=settings.jetstream_replicas))
    warm = None
    if settings.realtime_warm_sockets > 0:
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        warm = WarmSockets(settings.openai_realtime_url, settings.openai_realtime_model, key,
                           settings.realtime_warm_sockets, settings.realtime_warm_max_age_s)
        await warm.start()
        stack.push_async_callback(warm.close)
    ctx = BridgeContext(nc=nc, js=js, settings=settings, agents=agents, tools=ToolClient(nc, settings.tool_timeout_s),
                        bridge_id=bridge_id, twilio=twilio, calls=calls, warm=warm)
    bridge = Bridge(ctx, calls)
    await bridge.start()
    # The health server outlives the drain, so that /healthz says "draining" (503) while it runs.
    await stack.enter_async_context(HealthServer(settings.metrics_host, settings.metrics_port, bridge.health,
                                                 registry=m.REGISTRY))
    stack.push_async_callback(bridge.drain)
    if settings.openai_api_key is None:
        log.warning("OPENAI_API_KEY is unset: talking to %s (a simulator?)", settings.openai_realtime_url)
    log.info("realtime-bridge %s ready with agents %s", bridge_id, sorted(agents.agents))
    return bridge


def main() -> None:
    settings = BridgeSettings()
    logs.setup(settings.log_level, "realtime-bridge")

    async def _main(stack: AsyncExitStack, stop: asyncio.Event) -> None:
        await serve(stack, stop, settings)  # on SIGTERM the stack's first step is the drain

    runtime.run(_main)


if __name__ == "__main__":
    main()
