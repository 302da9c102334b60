"""One client WebSocket: RFC 6455 framing, a non-blocking bounded write path, and close codes.

gevent-websocket performs the HTTP upgrade; after that this module reads and writes frames on
the raw socket itself. That fixes three gevent-websocket 0.10.1 problems in one place
(../shared/DESIGN.md §5): close codes are really sent, pre-encoded UTF-8 goes out as a *text*
frame, and an oversize frame is refused from its header, its payload never held in memory.

Writes never block the caller: a frame is written straight to the socket when nothing is
pending; whatever the kernel does not take goes to a bounded outbox drained by one greenlet
that exists only while there is a backlog. A client that lets its outbox overflow is closed
with 4100, so a slow reader never holds up a publish to anyone else.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections import deque
from typing import Any

import gevent

from ipe import protocol

log = logging.getLogger(__name__)

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
CLOSE_WAIT = 3.0  # seconds we wait for the peer's closing handshake before dropping TCP

_unpack_h = struct.Struct("!H").unpack
_unpack_q = struct.Struct("!Q").unpack
_pack_hdr16 = struct.Struct("!BBH").pack
_pack_hdr64 = struct.Struct("!BBQ").pack


def frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """A complete unmasked server frame (FIN set) carrying `payload`."""
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return _pack_hdr16(first, 126, n) + payload
    return _pack_hdr64(first, 127, n) + payload


def text_frame(payload: bytes) -> bytes:
    """A text frame for a UTF-8 JSON payload: built once, written to every subscriber."""
    return frame(payload, OP_TEXT)


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame with `code` and a reason cut to fit the 125-byte control-frame limit."""
    return frame(struct.pack("!H", code) + reason.encode()[:123], OP_CLOSE)


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if not n:
        return payload
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class Closed(Exception):
    """Raised inside the reader when the connection has ended."""


class Connection:
    """A client connection: identity, subscriptions, and the two directions of its socket."""

    __slots__ = (
        "socket_id",
        "app",
        "channels",
        "user_id",
        "user_data",
        "watchlist",
        "last_seen",
        "ping_sent",
        "closing",
        "close_code",
        "events_window",
        "events_count",
        "_sock",
        "_raw_send",
        "_read",
        "_outbox",
        "_outbox_bytes",
        "_max_outbox",
        "_max_frame",
        "_on_overflow",
        "_closer",
        "__weakref__",
    )

    def __init__(
        self,
        sock: Any,
        rfile: Any,
        app: Any,
        socket_id: str,
        max_outbox: int,
        max_frame: int,
        on_overflow: Any = None,
    ) -> None:
        self.socket_id = socket_id
        self.app = app
        self.channels: dict[str, Any] = {}  # channel -> presence user id or None
        self.user_id: str | None = None
        self.user_data: dict[str, Any] | None = None
        self.watchlist: tuple[str, ...] = ()
        self.last_seen = time.monotonic()
        self.ping_sent = 0.0
        self.closing = False
        self.close_code: int | None = None
        self.events_window = 0.0
        self.events_count = 0
        self._sock = sock
        # TLS sockets must go through the SSL object; plain ones can be written raw.
        raw = getattr(sock, "_sock", None)
        self._raw_send = None if hasattr(sock, "_sslobj") or raw is None else raw.send
        self._read = rfile.read
        self._outbox: deque[bytes] | None = None
        self._outbox_bytes = 0
        self._max_outbox = max_outbox
        self._max_frame = max_frame
        self._on_overflow = on_overflow
        self._closer: Any = None

    def __repr__(self) -> str:
        return f"<Connection {self.socket_id} app={getattr(self.app, 'app_id', None)}>"

    # --- writing ------------------------------------------------------------------------------

    def send(self, data: bytes) -> bool:
        """Write one pre-built frame without blocking; False if the connection is closing."""
        if self.closing:
            return False
        return self._write(data)

    def send_event(self, payload: bytes) -> bool:
        """Frame and send one JSON payload to this connection only."""
        return self.send(text_frame(payload))

    def _write(self, data: bytes) -> bool:
        outbox = self._outbox
        if outbox is not None:
            if self._outbox_bytes + len(data) > self._max_outbox:
                self._overflow()
                return False
            outbox.append(data)
            self._outbox_bytes += len(data)
            return True
        sent = 0
        if self._raw_send is not None:
            try:
                sent = self._raw_send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._abort()
                return False
            if sent == len(data):
                return True
        # The unsent tail of this frame goes to the writer directly, never into the outbox:
        # the outbox holds whole frames only, so that dropping it on overflow cannot cut a
        # frame in half (the client would read our close frame as the rest of its payload).
        self._outbox = deque()
        self._outbox_bytes = 0
        gevent.spawn(self._drain, data[sent:])
        return True

    def _drain(self, rest: bytes) -> None:
        """Finish the partly written frame `rest`, then the backlog, with cooperative blocking;
        the only writer while one exists. `_outbox_bytes` counts what still waits."""
        outbox = self._outbox
        try:
            self._sock.sendall(rest)
            while outbox:
                data = outbox.popleft()
                self._outbox_bytes -= len(data)
                self._sock.sendall(data)
        except OSError:
            self._abort()
        finally:
            if self._outbox is outbox:
                self._outbox = None
                self._outbox_bytes = 0

    def _overflow(self) -> None:
        log.warning("closing %r: outbox over %d bytes (slow consumer)", self, self._max_outbox)
        if self._on_overflow is not None:
            self._on_overflow()
        if self._outbox is not None:
            self._outbox.clear()
            self._outbox_bytes = 0
        self.close(protocol.OVER_CAPACITY, "Client is not reading fast enough")

    def close(self, code: int, reason: str = "", error: bool = False) -> None:
        """Start the closing handshake with `code`; with `error`, send a pusher:error first."""
        if self.closing:
            return
        if error:
            self._write(text_frame(protocol.encode_error(code, reason)))
        self.closing = True
        self.close_code = code
        self._write(close_frame(code, reason))
        # The reader ends when the peer answers; if it never does, drop the TCP connection.
        self._closer = gevent.spawn_later(CLOSE_WAIT, self._abort)

    def _abort(self) -> None:
        """Drop the TCP connection now; the reader then sees EOF and cleans up."""
        self.closing = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # --- reading ------------------------------------------------------------------------------

    def receive(self) -> str | None:
        """The next text message, or None once the connection has ended (cleanly or not)."""
        try:
            return self._receive()
        except Closed:
            return None
        except OSError:
            return None

    def _read_exact(self, n: int) -> bytes:
        data = self._read(n)
        if len(data) != n:
            raise Closed
        return data

    def _skip(self, n: int) -> None:
        """Read and drop `n` bytes in small pieces (an oversize payload is never held)."""
        while n > 0:
            n -= len(self._read_exact(min(n, 65536)))

    def _fail(self, code: int, reason: str) -> None:
        """Start the closing handshake for a client error; the reader goes on until it ends.

        Dropping the connection at once would reset it while the client's bytes are still
        unread, and a reset destroys our close frame in flight: the client would never learn
        the code. So whatever the client still sends is read and dropped until its close
        frame arrives, or CLOSE_WAIT passes.
        """
        log.info("closing %r: %s", self, reason)
        self.close(code, reason)

    def _frame_error(
        self, b0: int, masked: int, opcode: int, length: int, size: int, started: int | None
    ) -> tuple[int, str] | None:
        """The close code and reason a frame header earns, or None when it is acceptable."""
        if b0 & 0x70:
            return protocol.WS_PROTOCOL_ERROR, "Reserved bits set"
        if not masked:
            return protocol.WS_PROTOCOL_ERROR, "Client frames must be masked"
        if opcode >= OP_CLOSE:
            if opcode > OP_PONG:
                return protocol.WS_PROTOCOL_ERROR, f"Unknown opcode {opcode}"
            if length > 125 or not b0 & 0x80:
                return protocol.WS_PROTOCOL_ERROR, "Invalid control frame"
            return None
        if opcode > OP_BINARY:
            return protocol.WS_PROTOCOL_ERROR, f"Unknown opcode {opcode}"
        if opcode == OP_CONTINUATION and started is None:
            return protocol.WS_PROTOCOL_ERROR, "Unexpected continuation frame"
        if opcode != OP_CONTINUATION and started is not None:
            return protocol.WS_PROTOCOL_ERROR, "Expected a continuation frame"
        if size + length > self._max_frame:
            return protocol.WS_MESSAGE_TOO_BIG, "Message too big"
        return None

    def _receive(self) -> str:
        """Read frames until a whole text message arrives; raises Closed when the socket ends."""
        while True:
            opcode, data = self._read_message()
            if opcode == OP_BINARY:
                self._fail(protocol.WS_UNSUPPORTED_DATA, "Binary frames are not supported")
                continue
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                self._fail(protocol.WS_INVALID_PAYLOAD, "Invalid UTF-8")

    def _read_message(self) -> tuple[int, bytes]:
        """The opcode and payload of the next data message; answers control frames on the way.

        Once the connection is closing, every frame but the peer's close is read and dropped.
        """
        parts: list[bytes] = []
        size = 0
        started: int | None = None
        read = self._read_exact
        while True:
            b0, b1 = read(2)
            opcode = b0 & 0x0F
            masked = b1 & 0x80
            length = b1 & 0x7F
            if length == 126:
                (length,) = _unpack_h(read(2))
            elif length == 127:
                (length,) = _unpack_q(read(8))
            mask = read(4) if masked else b""
            if not self.closing:
                error = self._frame_error(b0, masked, opcode, length, size, started)
                if error is not None:
                    self._fail(*error)
            if self.closing and (opcode != OP_CLOSE or length > 125):
                self._skip(length)  # after our close frame only the peer's close matters
                continue
            payload = read(length) if length else b""
            if mask:
                payload = _unmask(payload, mask)
            self.last_seen = time.monotonic()
            self.ping_sent = 0.0
            if opcode == OP_PING:
                self._write(frame(payload, OP_PONG))
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                self._peer_closed(payload)
                raise Closed
            if started is None:
                started = opcode
            parts.append(payload)
            size += length
            if b0 & 0x80:
                return started, b"".join(parts)

    def _peer_closed(self, payload: bytes) -> None:
        """Answer the peer's close frame (echoing its code) unless we started the close."""
        if self.closing:
            self._abort()
            return
        code = _unpack_h(payload[:2])[0] if len(payload) >= 2 else protocol.WS_NORMAL
        if code < 1000 or 1004 <= code <= 1006 or 1015 <= code < 3000 or code >= 5000:
            code = protocol.WS_PROTOCOL_ERROR
        self.closing = True
        self.close_code = code
        self._write(close_frame(code))

    def finish(self) -> None:
        """Called once by the reader when it is done: stop timers and release the socket."""
        self.closing = True
        if self._closer is not None:
            self._closer.kill(block=False)
            self._closer = None
