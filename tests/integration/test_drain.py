"""SIGTERM drains calmly: /ready 503 at once, 4200 closes spread over drain_seconds, exit in time.

A thousand sockets are held by raw, non-blocking TCP sockets in this process (one selector,
no thread per socket), so the test measures the server, not a client library.
"""

from __future__ import annotations

import base64
import math
import os
import resource
import selectors
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support import KEY, Gunicorn, IpeServer, config_with, wait_until

from ipe import config as ipe_config

SOCKETS = 1000
DRAIN = 2.0


class RawSockets:
    """Many WebSocket clients on raw sockets: handshake, then read until a close frame."""

    def __init__(self, port: int, n: int) -> None:
        self.port = port
        self.socks: list[socket.socket] = []
        self.buffers: dict[socket.socket, bytes] = {}
        self.upgraded: set[socket.socket] = set()
        self.established: set[socket.socket] = set()
        self.closes: dict[socket.socket, tuple[float, int | None]] = {}
        request = (
            f"GET /app/{KEY}?protocol=7&client=js&version=8.6.0 HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.selector = selectors.DefaultSelector()
        for _ in range(n):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(request)
            sock.setblocking(False)
            self.socks.append(sock)
            self.buffers[sock] = b""
            self.selector.register(sock, selectors.EVENT_READ)

    def poll(self, timeout: float) -> None:
        """Read what arrived; note established connections and (time, code) of close frames."""
        for key, _ in self.selector.select(timeout):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                self._closed(sock, None)
                continue
            self._parse(sock, self.buffers[sock] + data)

    def _parse(self, sock: socket.socket, buf: bytes) -> None:
        if sock not in self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buffers[sock] = buf
                return
            assert buf.startswith(b"HTTP/1.1 101"), buf[:200]
            self.upgraded.add(sock)
            buf = buf[end + 4 :]
        while len(buf) >= 2:
            opcode, length, start = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if length == 126:
                length, start = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                length, start = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < start + length:
                break
            payload, buf = buf[start : start + length], buf[start + length :]
            if opcode == 0x1 and b"pusher:connection_established" in payload:
                self.established.add(sock)
            elif opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                self._closed(sock, code)
                return
        self.buffers[sock] = buf

    def _closed(self, sock: socket.socket, code: int | None) -> None:
        self.closes.setdefault(sock, (time.monotonic(), code))
        self.selector.unregister(sock)
        sock.close()  # the server sees EOF: its closing handshake ends at once

    def close(self) -> None:
        for sock in self.socks:
            if sock not in self.closes:
                self.selector.unregister(sock)
                sock.close()
        self.selector.close()


def _ready_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url + "/ready", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None  # not listening any more


@pytest.fixture(autouse=True)
def _enough_descriptors() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 3 * SOCKETS
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"needs {wanted} file descriptors, the hard limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))  # servers inherit it


@pytest.mark.parametrize("launcher", [IpeServer, Gunicorn], ids=["ipe", "gunicorn"])
def test_sigterm_spreads_4200_closes_over_drain_seconds(launcher, tmp_path: Path) -> None:
    server = launcher(config_with(drain_seconds=DRAIN), tmp_path)
    server.start()
    clients = RawSockets(server.port, SOCKETS)
    try:
        wait_until(
            lambda: clients.poll(0.1) or len(clients.established) == SOCKETS,
            30,
            0,
            f"{SOCKETS} connections established",
        )
        statuses: list[tuple[float, int | None]] = []
        done = threading.Event()

        def watch_ready() -> None:
            while not done.is_set():
                statuses.append((time.monotonic(), _ready_status(server.url)))

        assert _ready_status(server.url) == 200
        watcher = threading.Thread(target=watch_ready, daemon=True)
        assert server.proc is not None
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        watcher.start()
        wait_until(
            lambda: clients.poll(0.1) or len(clients.closes) == SOCKETS,
            DRAIN + 15,
            0,
            "every socket closed",
        )
        done.set()
        watcher.join(5)
        limit = math.ceil(ipe_config.parse(server.config).stop_seconds)  # graceful_timeout
        exit_code = server.proc.wait(limit + 5)
        exited = time.monotonic() - signalled
    finally:
        clients.close()
        server.stop()

    codes = {code for _, code in clients.closes.values()}
    assert codes == {4200}, codes
    times = sorted(t for t, _ in clients.closes.values())
    assert times[-1] - times[0] >= DRAIN / 2, (times[0], times[-1])
    # /ready: 503 from the first close on (answers, not refusals: the listener stays open
    # while sockets close), never 200 again.
    answers = [status for t, status in statuses if t >= times[0] and status is not None]
    assert answers and set(answers) == {503}, statuses
    assert exit_code == 0, server.log()
    assert exited <= limit, f"exited after {exited:.1f}s, graceful_timeout is {limit}s"
    assert "Traceback" not in server.log()
