"""Taking a client socket over from pywsgi and gevent-websocket once the upgrade is done.

gevent-websocket performs the HTTP upgrade; `ipe.connection` reads and writes frames itself
after that. This module is the only one that touches their objects: it takes the socket (and
any bytes already buffered past the request) and makes gevent-websocket's object inert, so
that neither pywsgi's cleanup nor gevent-websocket's close writes to or closes it.
"""

from __future__ import annotations

import socket
from typing import Any

import gevent.socket
from geventwebsocket.websocket import WebSocket


class _Released(WebSocket):  # type: ignore[misc]
    """gevent-websocket's object once ipe owns the socket: closing it does nothing.

    Its own close() writes a frame without our code, and on an already closed socket it
    builds a new class (MockApp) on every call, twice per connection, through __del__.
    """

    __slots__ = ()

    def close(self, code: int = 1000, message: bytes = b"") -> None:
        self.closed = True

    def __del__(self) -> None:
        pass


def take_socket(ws: Any, read_size: int) -> tuple[Any, bytes, bool]:
    """(socket, bytes already read past the HTTP request, whether pywsgi let go of it).

    A plain socket's descriptor is detached into a socket of our own, so pywsgi's handler can
    return without closing the connection; a TLS socket stays with its handler greenlet.
    """
    handler = ws.handler
    sock = handler.socket
    rfile = handler.rfile
    # A client may have sent its first frame right behind the upgrade request: whatever the
    # buffered reader already holds is ours. Timeout 0 makes the read non-blocking.
    sock.settimeout(0.0)
    try:
        pending = rfile.read1(read_size) or b""
    except OSError:
        pending = b""
    finally:
        sock.settimeout(None)
    # gevent-websocket must not write its own close frame after ours (it drops the code).
    ws.__class__ = _Released
    ws.closed = True
    if hasattr(sock, "_sslobj"):
        return sock, pending, False
    rfile.close()
    own = gevent.socket.socket(fileno=sock.detach())
    handler.socket = None  # pywsgi's cleanup then neither reads from nor closes it
    if own.family in (socket.AF_INET, socket.AF_INET6):
        own.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return own, pending, True
