"""How a connection reads its socket: bytes that arrive with the upgrade, split frames,
many frames in one packet, and many idle sockets at once."""

from __future__ import annotations

import base64
import json
import os
import socket

import pytest


@pytest.fixture
def server(shared_server):
    """One process for the module: each test uses channels of its own."""
    return shared_server


def _masked(payload: bytes, opcode: int = 0x1) -> bytes:
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + key + body


def _read_frames(sock: socket.socket, count: int) -> list[dict]:
    """Read `count` text frames (server frames are unmasked and small here)."""
    buf = b""
    frames = []
    sock.settimeout(5)
    while len(frames) < count:
        while True:
            if len(buf) >= 2:
                n = buf[1] & 0x7F
                head = 2 if n < 126 else 4
                if n == 126 and len(buf) >= 4:
                    n = int.from_bytes(buf[2:4], "big")
                if len(buf) >= head + n:
                    frames.append(json.loads(buf[head : head + n]))
                    buf = buf[head + n :]
                    break
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {frames}"
            buf += chunk
    return frames


def test_frame_sent_with_the_upgrade_request_is_handled(server):
    """A client may write its first frame right behind the HTTP request, in one packet."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /app/demo-key?protocol=7 HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    ping = _masked(json.dumps({"event": "pusher:ping", "data": {}}).encode())
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(request + ping)
        sock.settimeout(5)
        response = b""
        while b"\r\n\r\n" not in response:
            response += sock.recv(1)
        assert response.startswith(b"HTTP/1.1 101")
        established, pong = _read_frames(sock, 2)
    assert established["event"] == "pusher:connection_established"
    assert pong["event"] == "pusher:pong"


def test_frames_split_across_writes_and_packed_into_one(server):
    client = server.ws()
    first = _masked(json.dumps({"event": "pusher:ping", "data": {}}).encode())
    subscribe = _masked(
        json.dumps({"event": "pusher:subscribe", "data": {"channel": "split"}}).encode()
    )
    # One frame byte by byte, then two frames in a single write.
    for i in range(len(first)):
        client.send_wire(first[i : i + 1])
    client.expect("pusher:pong")
    client.send_wire(subscribe + first)
    client.expect("pusher_internal:subscription_succeeded", "split")
    client.expect("pusher:pong")


def test_many_connections_each_get_their_own_events(server):
    clients = [server.ws() for _ in range(50)]
    for i, client in enumerate(clients):
        client.subscribe(f"many-{i}")
    sdk = server.sdk()
    for i in range(0, 50, 10):
        sdk.trigger([f"many-{j}" for j in range(i, i + 10)], "hello", {"n": 1})
    for i, client in enumerate(clients):
        assert client.expect("hello")["channel"] == f"many-{i}"
        client.sync()
