"""A raw WebSocket client for ipe: JSON frames in and out, close codes, bounded waits."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pusher
import websocket

from support.apps import KEY


class WsClient:
    """A raw WebSocket client: JSON frames in and out, close codes, bounded waits."""

    def __init__(
        self,
        url: str,
        header: list[str] | None = None,
        timeout: float = 5.0,
        handshake: bool = True,
        key: str = KEY,
        **options: Any,
    ) -> None:
        # websocket-client validates UTF-8 in pure Python (~2 ms per 10 KB frame); recv()'s
        # json.loads decodes the bytes as strict UTF-8 anyway. `options` go to
        # websocket.create_connection (sockopt, sslopt, ...).
        self.ws = websocket.create_connection(
            url,
            timeout=timeout,
            header=header or [],
            enable_multithread=True,
            skip_utf8_validation=True,
            **options,
        )
        self.timeout = timeout
        self.key = key  # the app key in the URL: support.auth signs with its secret
        self.joined: dict[str, Any] | None = None  # the roster support.auth.join got
        self.socket_id: str | None = None
        self.established: dict[str, Any] | None = None
        if handshake:
            first = self.recv()
            if first.get("event") == "pusher:connection_established":
                self.established = json.loads(first["data"])
                self.socket_id = self.established["socket_id"]
            else:
                self.first = first

    def send(self, event: str, data: Any = None, channel: str | None = None) -> None:
        message: dict[str, Any] = {"event": event}
        if data is not None:
            message["data"] = data
        if channel is not None:
            message["channel"] = channel
        self.ws.send(json.dumps(message))

    def send_raw(self, text: str | bytes, opcode: int = websocket.ABNF.OPCODE_TEXT) -> None:
        self.ws.send(text, opcode)

    def recv(self, timeout: float | None = None) -> dict[str, Any]:
        """The next frame as JSON; fails if none arrives within `timeout`."""
        self.ws.settimeout(timeout or self.timeout)
        opcode, data = self.ws.recv_data(control_frame=False)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise ConnectionClosed(*_close_info(data))
        return json.loads(data)  # type: ignore[no-any-return]

    def expect(
        self, event: str, channel: str | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """The next frame, asserting its event (and channel)."""
        message = self.recv(timeout)
        assert message.get("event") == event, f"expected {event}, got {message}"
        if channel is not None:
            assert message.get("channel") == channel, f"expected channel {channel}: {message}"
        return message

    def wait_for(
        self, event: str, channel: str | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """Skip frames until one with `event` (and `channel`) arrives."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {event} within {timeout or self.timeout}s")
            message = self.recv(left)
            if message.get("event") == event and (
                channel is None or message.get("channel") == channel
            ):
                return message

    def subscribe(
        self, channel: str, auth: str | None = None, channel_data: str | None = None
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"channel": channel, "auth": auth or ""}
        if channel_data is not None:
            data["channel_data"] = channel_data
        self.send("pusher:subscribe", data)
        return self.recv()

    def sync(self) -> None:
        """Round-trip a pusher:ping: every frame the server queued before is read before."""
        self.send("pusher:ping", {})
        message = self.recv()
        assert message["event"] == "pusher:pong", f"expected nothing before the pong: {message}"

    def subscribe_signed(
        self, sdk: pusher.Pusher, channel: str, custom_data: Any = None
    ) -> dict[str, Any]:
        """Subscribe with a token from the SDK's `authenticate` (channel_data for presence)."""
        token = sdk.authenticate(channel, self.socket_id, custom_data)
        return self.subscribe(channel, token["auth"], token.get("channel_data"))

    def expect_refusal(self, channel: str, reply: dict[str, Any] | None = None) -> dict[str, Any]:
        """A refused subscription: `pusher:subscription_error` on the channel (what Echo's
        `.error()` gets; pass it as `reply` if already read, e.g. from `subscribe`), then
        Pusher's own `pusher:error` with code null. Returns the former's data."""
        refusal = reply or self.expect("pusher:subscription_error", channel)
        assert refusal["event"] == "pusher:subscription_error", refusal
        assert refusal["channel"] == channel, refusal
        error = self.expect("pusher:error")
        assert error["data"] == {"code": None, "message": refusal["data"]["error"]}, error
        return refusal["data"]  # type: ignore[no-any-return]

    def sign_in(self, sdk: pusher.Pusher, user_data: dict[str, Any]) -> dict[str, Any]:
        """Send pusher:signin with the SDK's `authenticate_user` token; returns the reply."""
        token = sdk.authenticate_user(self.socket_id, user_data)
        self.send("pusher:signin", {"auth": token["auth"], "user_data": token["user_data"]})
        return self.recv()

    def send_wire(self, data: bytes) -> None:
        """Write raw bytes to the TCP socket (hand-made frames, broken framing)."""
        self.ws.sock.sendall(data)

    def send_frame(
        self,
        opcode: int,
        payload: bytes = b"",
        fin: bool = True,
        rsv: int = 0,
        mask: bool = True,
        length: int | None = None,
    ) -> None:
        """One hand-made frame: any opcode, reserved bits, unmasked, or a false `length`."""
        n = len(payload) if length is None else length
        head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | opcode])
        bit = 0x80 if mask else 0
        if n < 126:
            head += bytes([bit | n])
        elif n < 65536:
            head += bytes([bit | 126]) + n.to_bytes(2, "big")
        else:
            head += bytes([bit | 127]) + n.to_bytes(8, "big")
        if mask:
            key = os.urandom(4)
            head += key
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        self.send_wire(head + payload)

    def expect_close(self, timeout: float | None = None) -> tuple[int | None, str]:
        """Read until the server's close frame; returns (code, reason)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("connection was not closed")
            try:
                self.recv(left)
            except ConnectionClosed as closed:
                return closed.code, closed.reason
            except websocket.WebSocketConnectionClosedException:
                return None, ""

    def close(self) -> None:
        try:
            self.ws.close(timeout=1)
        except Exception:
            pass
        finally:
            self.ws.shutdown()


class ConnectionClosed(Exception):
    """The server sent a close frame."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


def _close_info(data: bytes) -> tuple[int | None, str]:
    if len(data) >= 2:
        return int.from_bytes(data[:2], "big"), data[2:].decode(errors="replace")
    return None, ""
