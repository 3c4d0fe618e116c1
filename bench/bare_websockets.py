"""The bare `websockets` baseline: `python -m bench.bare_websockets PORT`.

Receivers connect to `/fanout`; every frame a client sends on `/publish` is broadcast as it
is to every receiver (`websockets.broadcast`, which writes the same bytes to each socket).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import websockets
from websockets.asyncio.server import broadcast, serve

RECEIVERS: set[Any] = set()


async def handler(connection: Any) -> None:
    if connection.request.path.startswith("/publish"):
        async for frame in connection:
            broadcast(RECEIVERS, frame)
        return
    RECEIVERS.add(connection)
    try:
        await connection.wait_closed()
    finally:
        RECEIVERS.discard(connection)


async def main(port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(
        handler, "127.0.0.1", port, compression=None, max_size=None, ping_interval=None
    ):
        await stop


if __name__ == "__main__":
    print(f"bare websockets {websockets.__version__} on {sys.argv[1]}", flush=True)
    asyncio.run(main(int(sys.argv[1])))
