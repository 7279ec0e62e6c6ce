"""What the WebSocket engines share: opening the provider's socket, and sending one event on it."""

from __future__ import annotations

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


async def open_socket(url: str, api_key: str | None) -> ClientConnection:
    """Open one model socket. No compression: audio does not compress and deflate costs CPU."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return await connect(
        url, additional_headers=headers, compression=None, max_size=16 * 1024 * 1024,
        open_timeout=10, ping_interval=20, ping_timeout=20, close_timeout=2,
    )  # fmt: skip


class SocketConnection:
    """The socket of one engine connection: None before it opens and once it is lost or closed."""

    _ws: ClientConnection | None = None

    async def _send(self, event: str) -> bool:
        """Send one client event; False when there is no socket to take it."""
        ws = self._ws
        if ws is None:
            return False
        try:
            await ws.send(event)
            return True
        except ConnectionClosed:
            return False
