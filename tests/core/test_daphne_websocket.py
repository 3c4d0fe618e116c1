"""The websocket fast paths of core/daphne_websocket.py, against what they replace.

`IntMasker` must unmask exactly as autobahn's native masker, however a frame's payload arrives
in pieces; `write_now` must put the bytes on the socket in order, handing what the kernel does
not take to Twisted's own buffer, and leave every other transport to Twisted.
"""

from __future__ import annotations

import itertools
import socket
from typing import Any, cast

from autobahn.nvx._xormasker import create_xor_masker
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import tcp

from core.daphne_websocket import SMALL_FRAME, IntMasker, write_now


@settings(max_examples=300, deadline=None)
@given(
    mask=st.binary(min_size=4, max_size=4),
    payload=st.binary(max_size=SMALL_FRAME),
    cuts=st.lists(st.integers(min_value=0, max_value=SMALL_FRAME), max_size=4),
)
def test_int_masker_unmasks_as_autobahn_does(mask: bytes, payload: bytes, cuts: list[int]) -> None:
    ours, native = IntMasker(mask), create_xor_masker(mask, len(payload))
    edges = sorted({0, len(payload), *(cut for cut in cuts if cut < len(payload))})
    for start, end in itertools.pairwise(edges):
        piece = payload[start:end]
        assert ours.process(piece) == native.process(piece)
        assert ours.pointer() == native.pointer() == end
    ours.reset()
    assert ours.pointer() == 0
    assert ours.process(payload) == IntMasker(mask).process(payload)


class Reactor:
    """What a Twisted transport asks of its reactor when it must wait to write."""

    def __init__(self) -> None:
        self.writers: list[Any] = []

    def addWriter(self, writer: Any) -> None:  # noqa: N802 - Twisted's name
        self.writers.append(writer)

    def removeWriter(self, writer: Any) -> None:  # noqa: N802 - Twisted's name
        self.writers.remove(writer)


def _connection() -> tuple[tcp.Connection, socket.socket, Reactor]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    reactor = Reactor()
    transport = tcp.Connection(ours, cast(Any, None), cast(Any, reactor))
    transport.connected = 1
    return transport, peer, reactor


def _read_all(peer: socket.socket, size: int, transport: tcp.Connection) -> bytes:
    got = bytearray()
    peer.settimeout(5)
    while len(got) < size:
        if transport._tempDataBuffer or transport.dataBuffer:
            transport.doWrite()  # the reactor's turn: Twisted writes what it buffered
        got += peer.recv(1 << 20)
    return bytes(got)


def test_a_frame_goes_to_the_socket_at_once_without_waking_the_reactor() -> None:
    transport, peer, reactor = _connection()
    write_now(transport, b"frame one", tcp.Connection)
    write_now(transport, b"frame two", tcp.Connection)
    assert reactor.writers == []
    assert peer.recv(100) == b"frame oneframe two"


def test_what_the_kernel_does_not_take_waits_in_twisted_and_order_holds() -> None:
    transport, peer, reactor = _connection()
    big = bytes(range(256)) * 40_000  # 10 MB: more than a socket buffer
    write_now(transport, big, tcp.Connection)
    assert reactor.writers == [transport]  # the rest is Twisted's to write
    write_now(transport, b"after", tcp.Connection)  # behind the rest, never before it
    assert _read_all(peer, len(big) + 5, transport) == big + b"after"


def test_other_transports_and_a_closing_connection_keep_twisted_s_write() -> None:
    transport, _peer, reactor = _connection()
    transport.disconnecting = True
    write_now(transport, b"late", tcp.Connection)
    assert reactor.writers == [transport]
    assert transport._tempDataBuffer == [b"late"]

    class Wrapped:  # e.g. a TLS transport: not a plain connection
        written: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.written.append(data)

    wrapped = Wrapped()
    write_now(wrapped, b"tls", tcp.Connection)
    assert wrapped.written == [b"tls"]
