"""How daphne closes websockets, made to fit the protocol.

1. The close codes the protocol needs: 1001 and 1009. Daphne closes a websocket through
   autobahn's `sendClose`, which only accepts 1000 and 3000-4999 from an application.
   PROTOCOL.md needs 1001 (server going away, on shutdown) and 1009 (frame too large), both
   codes RFC 6455 lets an endpoint send. This widens daphne's `serverClose` to send those codes
   with autobahn's lower-level `sendCloseFrame` (which sends the frame and moves the protocol to
   CLOSING exactly like `sendClose`). Other codes go through daphne unchanged.
2. A simultaneous close ends cleanly. When the server has sent its Close (a Disconnect
   answered, a refusal) and the client's own Close crosses it, autobahn, as a server, aborts
   the TCP connection (RST) at once. Twisted then discards what it had not written yet, the
   server's Close frame among it, and the client sees 1006 instead of the code it was sent
   (seen with the SDK's topics client under load: it sends Disconnect and closes). Here the
   connection is closed after the write buffer is flushed, as in every other clean close.
3. Frames go out at once, and small ones come in without a native masker each
   (`install_direct_writes`): see its docstring.
4. A text message is checked for UTF-8 once, when it is decoded, and one that is not UTF-8
   is closed with 1007 (`install_text_decoding`): see its docstring.

Without daphne installed this does nothing.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

RFC_CLOSE_CODES = frozenset({1001, 1009, 1011})

# RFC 6455 section 7.4.1: a text message that is not UTF-8.
INVALID_PAYLOAD = 1007


def _protocol_to_patch(marker: str) -> Any | None:
    """daphne's WebSocketProtocol, unless the patch named `marker` is already on it (or daphne
    is not installed): then None."""
    # Not at module top: daphne pulls in Twisted and autobahn, which importers of core need not.
    try:
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:  # pragma: no cover - daphne is a dependency
        return None
    return None if getattr(WebSocketProtocol, marker, False) else WebSocketProtocol


def install_close_handling() -> None:
    WebSocketProtocol = _protocol_to_patch("_datagate_close_codes")  # noqa: N806 - daphne's name
    if WebSocketProtocol is None:
        return
    original = WebSocketProtocol.serverClose

    def server_close(self: Any, code: int | None = None) -> None:
        # autobahn takes only a plain int (`type(code) != int` raises "invalid type ... for
        # close code"): an IntEnum such as CloseCode.NORMAL must not reach it as it is.
        code = int(code) if code is not None else None
        if code in RFC_CLOSE_CODES:
            self.sendCloseFrame(code=code, isReply=False)
            return
        original(self, code)

    WebSocketProtocol.serverClose = server_close

    original_on_close_frame = WebSocketProtocol.onCloseFrame
    original_drop = WebSocketProtocol.dropConnection

    def on_close_frame(self: Any, code: int, reason_raw: bytes) -> Any:
        # The peer's Close answers (or crossed) ours: the handshake is complete, and the TCP
        # connection is to be closed after what we queued, our Close frame, is written.
        self._datagate_flush_on_drop = self.state == self.STATE_CLOSING
        try:
            return original_on_close_frame(self, code, reason_raw)
        finally:
            self._datagate_flush_on_drop = False

    def drop_connection(self: Any, abort: bool = False) -> None:
        if abort and getattr(self, "_datagate_flush_on_drop", False):
            abort = False
        original_drop(self, abort)

    WebSocketProtocol.onCloseFrame = on_close_frame
    WebSocketProtocol.dropConnection = drop_connection
    WebSocketProtocol._datagate_close_codes = True


# --- the frame limit: DATAGATE_MAX_FRAME_BYTES, end to end ---------------------------------

# The key of the `websocket.receive` event that stands for a message over the limit: its size
# in bytes (as announced by its frame header, or as far as it got). The event carries no text
# and empty bytes, so an application that does not know the key sees an empty frame.
OVERSIZED = "datagate.oversized"

# Seconds an application has to close a socket after an oversized message before autobahn
# fails the connection itself (close 1009), so no socket stays half dead.
OVERSIZED_CLOSE_GRACE = 5.0


def install_frame_limit(limit: int | None = None) -> None:
    """Make daphne's websocket size limit DATAGATE_MAX_FRAME_BYTES, refused by the application.

    daphne gives autobahn a limit of its own (1 MiB, `--websocket-max-message-size`) through
    `WebSocketFactory.setProtocolOptions(maxMessagePayloadSize=..., maxFramePayloadSize=...)`;
    a message over it made autobahn drop the TCP connection (1006) before DataGate saw it, and
    a `MAX_FRAME_BYTES` above 1 MiB had no effect. autobahn also applies
    `maxMessagePayloadSize` to what the server sends, which would fail a pull chunk over it.

    After this call (datagate_site/asgi.py makes it, so every daphne command line has it):
    - autobahn's own limits are off (0), whatever daphne or its command line asked for;
    - an incoming message is measured here, frame by frame as its headers arrive, against
      `limit` (default DATAGATE_MAX_FRAME_BYTES); the first frame that takes it over the
      limit makes the rest of the message be read and dropped, never buffered, and the
      application gets one `websocket.receive` event with `OVERSIZED: size`. The DataGate
      consumers answer it like any frame over the limit: DG-2007, then close 1009;
    - if the application has not closed the socket `OVERSIZED_CLOSE_GRACE` seconds later,
      autobahn fails the connection with 1009 itself.
    What the server sends is not limited by autobahn: the server chooses its own chunks.
    Without daphne installed this does nothing.
    """
    # Not at module top: daphne pulls in Twisted and autobahn, which importers of core need not.
    try:
        from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
    except ImportError:  # pragma: no cover - daphne is a dependency
        return
    if limit is None:
        limit = int(settings.DATAGATE["MAX_FRAME_BYTES"])
    WebSocketProtocol._datagate_frame_limit = limit
    if getattr(WebSocketProtocol, "_datagate_frame_limit_installed", False):
        return
    set_options = WebSocketFactory.setProtocolOptions

    def set_protocol_options(self: Any, *args: Any, **options: Any) -> None:
        if "maxMessagePayloadSize" in options or "maxFramePayloadSize" in options:
            options["maxMessagePayloadSize"] = 0
            options["maxFramePayloadSize"] = 0
        set_options(self, *args, **options)

    frame_begin = WebSocketProtocol.onMessageFrameBegin

    def on_message_frame_begin(self: Any, length: int) -> None:
        frame_begin(self, length)  # adds `length` to message_data_total_length
        if self.failedByMe:
            return
        limit = self._datagate_frame_limit
        if 0 < limit < self.message_data_total_length:
            self._max_message_size_exceeded(
                self.message_data_total_length,
                limit,
                f"message of {self.message_data_total_length} bytes over the {limit} limit",
            )

    def max_size_exceeded(self: Any, size: int, limit: int, reason: str) -> None:
        if self.failedByMe:
            return
        # autobahn reads and drops whatever else comes while failedByMe is set; the socket
        # stays open so the application can send its error before closing.
        self.failedByMe = True
        self.wasMaxMessagePayloadSizeExceeded = True
        queue = getattr(self, "application_queue", None)
        if queue is None or self.state != self.STATE_OPEN:
            self._fail_connection(self.CLOSE_STATUS_CODE_MESSAGE_TOO_BIG, reason)
            return
        queue.put_nowait({"type": "websocket.receive", "text": None, "bytes": b"", OVERSIZED: size})

        def close_if_still_open() -> None:
            if self.state == self.STATE_OPEN:
                self._fail_connection(self.CLOSE_STATUS_CODE_MESSAGE_TOO_BIG, reason)

        # Not at module top: importing the reactor installs Twisted's default one; daphne's first.
        from twisted.internet import reactor

        twisted_reactor: Any = reactor
        twisted_reactor.callLater(OVERSIZED_CLOSE_GRACE, close_if_still_open)

    WebSocketFactory.setProtocolOptions = set_protocol_options
    WebSocketProtocol.onMessageFrameBegin = on_message_frame_begin
    WebSocketProtocol._max_message_size_exceeded = max_size_exceeded
    WebSocketProtocol._datagate_frame_limit_installed = True


# --- frames to the socket at once ---------------------------------------------------------


def install_direct_writes() -> None:
    """Write each websocket frame to its socket at once, not on the reactor's next turn.

    Twisted buffers every `transport.write` and registers the socket with the event loop as a
    writer (an `epoll_ctl`), then writes on the loop's next turn and unregisters it (another).
    For a live feed fanned out to 200 sockets that is 400 `epoll_ctl` calls and 200 extra
    callbacks per feed, 10-12% of the server's busy time (bench/RESULTS.md, "Issue 21: frames
    to the socket at once"). Here a frame is handed to `socket.send` at once when nothing is
    waiting in the transport's buffer; what the kernel does not take (a slow reader, a full
    buffer) and every error go to Twisted's own `write`, which keeps order and handles them as
    before. A TLS transport, autobahn's chopped or synchronous writes and its octet logging
    keep their own path.

    autobahn's `sendData` and `dataReceived` also build the arguments of a debug log line (a
    qualified name, coloured) on every call, logged or not: 3.4% of the busy time. These two
    methods skip that line here; autobahn's frame-level logging (`logFrames`) is untouched.
    Nor does a message end fire autobahn's "message" event (a future gathered per message)
    when nothing listens to it, which under daphne nothing does (2.5%).

    Every frame a client sends is masked; autobahn unmasks each with a native masker made for
    it through cffi (an import, two allocations and a finaliser per frame: 3.8% of the busy
    time, for acks of 100 bytes). A frame under `SMALL_FRAME` bytes is unmasked by `IntMasker`
    instead, with one XOR of two Python integers.
    Without daphne installed this does nothing.
    """
    WebSocketProtocol = _protocol_to_patch("_datagate_direct_writes")  # noqa: N806 - daphne's name
    if WebSocketProtocol is None:
        return
    from autobahn.websocket import protocol as autobahn_protocol
    from twisted.internet import tcp

    original_send_data = WebSocketProtocol.sendData
    state_open = WebSocketProtocol.STATE_OPEN
    preopen = (WebSocketProtocol.STATE_CONNECTING, WebSocketProtocol.STATE_PROXY_CONNECTING)

    def send_data(self: Any, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        if sync or chopsize or self.send_queue or self.logOctets:
            original_send_data(self, data, sync, chopsize)
            return
        write_now(self.transport, data, tcp.Connection)
        if self.state == state_open:
            self.trafficStats.outgoingOctetsWireLevel += len(data)
        elif self.state in preopen:
            self.trafficStats.preopenOutgoingOctetsWireLevel += len(data)

    def data_received(self: Any, data: bytes) -> None:
        self._dataReceived(data)

    original_message_end = WebSocketProtocol.onMessageEnd

    def on_message_end(self: Any) -> None:
        if self._listeners is not None or self.trackedTimings:
            original_message_end(self)
            return
        # autobahn's own, without firing its "message" event to listeners there are none of.
        if not self.failedByMe:
            self._onMessage(b"".join(self.message_data), self.message_is_binary)
        self.message_data = None

    WebSocketProtocol.sendData = send_data
    WebSocketProtocol.dataReceived = data_received
    WebSocketProtocol.onMessageEnd = on_message_end
    native_masker = autobahn_protocol.create_xor_masker

    def create_xor_masker(mask: bytes, length: int | None = None) -> Any:
        if length is not None and length < SMALL_FRAME:
            return IntMasker(mask)
        return native_masker(mask, length)

    autobahn_protocol.create_xor_masker = create_xor_masker
    WebSocketProtocol._datagate_direct_writes = True


def write_now(transport: Any, data: bytes, plain: Any) -> None:
    """`transport.write(data)`, sending at once what the socket takes when nothing is queued.

    `plain` is Twisted's `tcp.Connection`: only a plain (not TLS) TCP or Unix connection, open,
    not closing, with an empty buffer, is written directly; anything else is Twisted's write.
    """
    if (
        isinstance(transport, plain)
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport._tempDataBuffer
        and not transport.dataBuffer
    ):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int) and sent >= 0:
            if sent == len(data):
                return
            data = data[sent:]
        # A lost connection (an exception returned, not raised): Twisted's own write buffers
        # the frame and finds the loss on its next attempt, as it always did.
    transport.write(data)


# Client frames under this many bytes are unmasked by `IntMasker`, larger ones natively.
SMALL_FRAME = 4096


class IntMasker:
    """Unmasks (XORs with the 4-byte mask, RFC 6455 section 5.3) a frame's payload as it comes,
    piece by piece, with autobahn's masker interface (`pointer`, `reset`, `process`)."""

    __slots__ = ("_mask", "_pointer")

    def __init__(self, mask: bytes) -> None:
        self._mask = bytes(mask)
        self._pointer = 0

    def pointer(self) -> int:
        return self._pointer

    def reset(self) -> None:
        self._pointer = 0

    def process(self, data: bytes) -> bytes:
        size = len(data)
        offset = self._pointer & 3
        key = (self._mask * ((size + offset) // 4 + 1))[offset : offset + size]
        self._pointer += size
        unmasked = int.from_bytes(data, "little") ^ int.from_bytes(key, "little")
        return unmasked.to_bytes(size, "little")


# --- text messages decoded once -----------------------------------------------------------


def install_text_decoding() -> None:
    """Check a text message's UTF-8 once, as daphne decodes it, and close 1007 when it fails.

    autobahn validated every incoming text frame's bytes as they arrived (a cffi call per
    frame: 3% of a pushing server's busy time, bench/RESULTS.md), and daphne then decoded the
    whole message again with `bytes.decode`. A message that was not UTF-8 made autobahn drop
    the TCP connection (the client saw 1006, no reason). Now autobahn's check is off
    (`utf8validateIncoming=False` on daphne's factory, whatever else daphne sets), daphne's
    decode is the one check, and a message it refuses gets the close RFC 6455 asks for: 1007,
    sent before the connection closes; nothing of it reaches the application. A valid message
    is taken whatever its fragments split (the decode sees it whole).
    Without daphne installed this does nothing.
    """
    WebSocketProtocol = _protocol_to_patch("_datagate_text_decoding")  # noqa: N806 - daphne's name
    if WebSocketProtocol is None:
        return
    from daphne.ws_protocol import WebSocketFactory

    set_options = WebSocketFactory.setProtocolOptions

    def set_protocol_options(self: Any, *args: Any, **options: Any) -> None:
        options["utf8validateIncoming"] = False
        set_options(self, *args, **options)

    on_message = WebSocketProtocol.onMessage

    def on_text_or_binary(self: Any, payload: bytes, isBinary: bool) -> None:  # noqa: N803
        try:
            on_message(self, payload, isBinary)  # daphne decodes a text message here
        except UnicodeDecodeError as error:
            if self.state == self.STATE_OPEN:
                reason = f"not UTF-8 at byte {error.start}".encode()
                self.sendCloseFrame(code=INVALID_PAYLOAD, reasonUtf8=reason, isReply=False)

    WebSocketFactory.setProtocolOptions = set_protocol_options
    WebSocketProtocol.onMessage = on_text_or_binary
    WebSocketProtocol._datagate_text_decoding = True
