"""Let daphne send the RFC 6455 close codes the protocol needs: 1001 and 1009.

Daphne closes a websocket through autobahn's `sendClose`, which only accepts 1000 and
3000-4999 from an application. PROTOCOL.md needs 1001 (server going away, on shutdown) and
1009 (frame too large), both codes RFC 6455 lets an endpoint send. This widens daphne's
`serverClose` to send those codes with autobahn's lower-level `sendCloseFrame` (which sends the
frame and moves the protocol to CLOSING exactly like `sendClose`). Other codes go through
daphne unchanged. Without daphne installed this does nothing.
"""

from __future__ import annotations

from typing import Any

RFC_CLOSE_CODES = frozenset({1001, 1009, 1011})


def allow_protocol_close_codes() -> None:
    try:
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:  # pragma: no cover - daphne is a dependency
        return
    if getattr(WebSocketProtocol, "_datagate_close_codes", False):
        return
    original = WebSocketProtocol.serverClose

    def server_close(self: Any, code: int | None = None) -> None:
        if code in RFC_CLOSE_CODES:
            self.sendCloseFrame(code=code, isReply=False)
            return
        original(self, code)

    WebSocketProtocol.serverClose = server_close
    WebSocketProtocol._datagate_close_codes = True
