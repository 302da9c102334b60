"""Taking a client socket over from pywsgi and gevent-websocket once a long-lived response
has begun: a WebSocket after its upgrade, an HTTP-fallback stream after its headers.

gevent-websocket performs the HTTP upgrade; `ipe.connection` reads and writes frames itself
after that. pywsgi writes an `xhr_streaming` response's headers; `ipe.http_transport` writes
its lines after that. This module is the only one that touches their objects: it takes the
socket (and, for a WebSocket, any bytes already buffered past the request) and makes
pywsgi's handler (and gevent-websocket's object) let go of it, so that neither pywsgi's
cleanup nor gevent-websocket's close writes to or closes it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
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


def plain_socket(sock: Any) -> Any:
    """The OS socket (non-blocking) inside gevent's socket `sock`, or None for a TLS socket
    (which must be read and written through its SSL object) or anything else."""
    if sock is None or hasattr(sock, "_sslobj"):
        return None
    return getattr(sock, "_sock", None)


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


def can_take_response_socket(handler: Any) -> bool:
    """True if the connection of pywsgi's `handler` can be taken over once its response's
    headers are out: a plain socket (a TLS one stays with its handler greenlet), and the
    request's body read to its end (pywsgi would read the rest from the socket after)."""
    sock = handler.socket
    body = handler.wsgi_input
    return (
        sock is not None
        and not hasattr(sock, "_sslobj")
        and body is not None
        and not body.chunked_input
        and body.position >= (body.content_length or 0)
    )


def take_response_socket(handler: Any) -> Any:
    """The plain socket of the response pywsgi's `handler` has written the headers of, ipe's
    from now on (see `can_take_response_socket`): pywsgi then writes nothing more to it (not
    even the end of a chunked body), reads no further request from it and does not close it;
    its handler greenlet returns, with its environ and read buffer."""
    sock = handler.socket
    handler.rfile.close()
    own = gevent.socket.socket(fileno=sock.detach())
    handler.socket = None
    handler.response_use_chunked = False
    handler.close_connection = True
    if own.family in (socket.AF_INET, socket.AF_INET6):
        own.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return own


def giver(handler: Any) -> Callable[[Any], None] | None:
    """A function that gives a socket taken from pywsgi's `handler` back to its server, which
    then serves the connection's next request (keep-alive) as it serves a new connection's;
    None if the server cannot (it serves connections in place)."""
    server = handler.server
    address = handler.client_address
    if getattr(server, "_spawn", None) is None:
        return None
    return lambda sock: server.do_handle(sock, address)
