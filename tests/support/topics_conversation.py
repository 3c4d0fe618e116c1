"""A scripted topics conversation over a `WebsocketCommunicator` (tests only)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from topics.routing import websocket_urlpatterns

PREFIX = "datagate.topic."
APPLICATION = URLRouter(websocket_urlpatterns)


class Talk:
    """One client connection: send messages, await replies, collect delivered batches."""

    def __init__(self, tenant: str = "acme") -> None:
        self.tenant = tenant
        self.communicator = WebsocketCommunicator(APPLICATION, f"/ws/topics/{tenant}/")
        self.transaction_id = str(uuid.uuid4())
        self.user_name: str | None = None
        self.batches: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []

    async def open(self) -> None:
        connected, _ = await self.communicator.connect()
        assert connected

    def header(self, message_type: str) -> dict[str, Any]:
        return {
            "id": str(uuid.uuid4()),
            "messageType": PREFIX + message_type,
            "transactionId": self.transaction_id,
            "tenant": self.tenant,
            "userName": self.user_name,
            "origin": "test-client",
            "timestamp": 0,
        }

    async def send(self, message_type: str, **body: Any) -> str:
        header = self.header(message_type)
        await self.communicator.send_to(text_data=json.dumps({"header": header, **body}))
        return str(header["id"])

    async def send_raw(self, text: str) -> None:
        await self.communicator.send_to(text_data=text)

    async def next(self, timeout: float = 20) -> dict[str, Any]:
        output = await self.communicator.receive_output(timeout)
        if output["type"] == "websocket.close":
            return {"close": output.get("code")}
        return dict(json.loads(output["text"]))

    async def reply_to(self, message_id: str, timeout: float = 20) -> dict[str, Any]:
        """The reply (ack or error) to a request; batches seen meanwhile are kept."""
        while True:
            frame = await self.next(timeout)
            if "close" in frame:
                raise AssertionError(f"socket closed with {frame['close']} awaiting a reply")
            if frame["header"]["messageType"] == PREFIX + "messages":
                self.batches.append(frame)
                continue
            if frame["header"].get("correlationId") == message_id:
                return frame
            if frame["header"]["messageType"] == PREFIX + "error":
                self.errors.append(frame)
                continue
            raise AssertionError(f"unexpected frame {frame}")

    async def request(self, message_type: str, **body: Any) -> dict[str, Any]:
        return await self.reply_to(await self.send(message_type, **body))

    async def connect(self, token: str, device: str = "phone") -> dict[str, Any]:
        await self.open()
        ack = await self.request("connect", authToken=token, device=device)
        assert ack["header"]["messageType"] == PREFIX + "connect.ack", ack
        self.user_name = ack["header"]["userName"]
        return ack

    async def batch(self, timeout: float = 20) -> dict[str, Any]:
        """The next delivered batch of messages."""
        if self.batches:
            return self.batches.pop(0)
        while True:
            frame = await self.next(timeout)
            assert "close" not in frame, frame
            if frame["header"]["messageType"] == PREFIX + "messages":
                return frame
            if frame["header"]["messageType"] == PREFIX + "error":
                self.errors.append(frame)
                continue
            raise AssertionError(f"unexpected frame {frame}")

    async def close(self) -> None:
        await self.communicator.disconnect()


def offsets(batch: dict[str, Any]) -> list[int]:
    return [m["offset"] for m in batch["messages"]]


def code_of(frame: dict[str, Any]) -> str:
    assert frame["header"]["messageType"] == PREFIX + "error", frame
    return str(frame["code"])
