"""A small TCP proxy in front of one daphne, which the chaos run steers.

Every client reaches a daphne through one of these, so the run can do to the network what
load balancers and bad links do: add latency, limit bandwidth, stall every byte (a partition:
TCP keeps the bytes, so nothing is corrupted; sockets simply stop moving until the heal or
until a side gives up on its timeouts), and reset every connection (RST, as a load balancer
that drops its table). It listens on loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct


class Proxy:
    def __init__(self, *, target_port: int, listen_port: int = 0) -> None:
        self.target_port = target_port
        self.listen_port = listen_port
        self.latency = 0.0  # seconds added before each chunk is passed on
        self.bandwidth = 0  # bytes per second per direction of a connection; 0: unlimited
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.connections = 0
        self.resets = 0

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.listen_port)
        self.listen_port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.reset()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    # --- faults -----------------------------------------------------------------------------

    def partition(self) -> None:
        """Stall every byte in both directions, on open and new connections, until heal()."""
        self._open.clear()

    def reset(self) -> None:
        """Reset every open connection (RST on both sides)."""
        for client, upstream in list(self._links):
            for writer in (client, upstream):
                _abort(writer)
        self.resets += len(self._links)
        self._links.clear()

    def heal(self) -> None:
        self.latency = 0.0
        self.bandwidth = 0
        self._open.set()

    # --- plumbing ---------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self._open.wait()
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except (OSError, asyncio.CancelledError):
            _abort(writer)
            return
        link = (writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            self._links.discard(link)
            for side in link:
                with contextlib.suppress(Exception):
                    side.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                await self._open.wait()
                if self.latency:
                    await asyncio.sleep(self.latency)
                if self.bandwidth:
                    await asyncio.sleep(len(data) / self.bandwidth)
                await self._open.wait()
                writer.write(data)
                await writer.drain()
        except (OSError, ConnectionError, asyncio.IncompleteReadError):
            _abort(writer)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN, as a dropped connection table does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport = writer.transport
    with contextlib.suppress(Exception):
        transport.abort()
