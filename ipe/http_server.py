"""ipe's HTTP front: gevent's pywsgi server and gevent-websocket's handler, with deadlines.

pywsgi waits for a request without any limit, so a client that connects and sends nothing
(or half a request line, or a body a byte a minute) would hold its socket and greenlet for
ever, and enough of them would exhaust the process. Here every connection in the HTTP phase
(TLS handshake, request line, headers, body, until the response starts) has a deadline,
`http_timeout`; an idle keep-alive connection gets `http_keepalive_timeout` to start its next
request. At most `http_max_connections` connections are in that phase per process: a new one
beyond it closes the one that has waited longest, so a flood of half-open sockets can delay
nobody's accept. A response is then written with a per-write timeout of `http_timeout`.

A WebSocket leaves the HTTP phase with its `101` response, an HTTP-fallback stream
(`ipe.http_transport`) with its `200`: from then on they are bounded by ipe's own limits
(`ipe.connection`, `ipe.http_transport` take a plain socket from pywsgi, whose handler
greenlet then ends; a poll's goes back to the server once answered). The
greenlets are not capped by a pool either, so gunicorn's `worker_connections` caps nothing:
the same Server and Handler serve `ipe` and gunicorn (see `install`).

Deadlines are kept in queues swept by one libev timer (`Deadlines`); an expired one shuts its
socket down: whatever greenlet was reading from it sees the end of the stream and finishes in
the usual way; no exception is injected into application code.

A kept connection of the in-process engine (no Redis, apps from the config: the lean REST
routes then touch only memory) waits for its next request in the event loop itself
(`Handler._serve_inline`): a backend's keep-alive publish is read, answered and replied to
in the I/O callback, without waking the connection's greenlet or running pywsgi's loop.
Anything else wakes the greenlet with the bytes already read in front of its stream.
"""

from __future__ import annotations

import _socket
import functools
import io
import logging
import os
import socket
import time
from typing import Any

import gevent
import gevent.pool
from gevent.hub import Waiter
from gevent.pywsgi import MAX_REQUEST_LINE, WSGIServer
from gevent.socket import wait as wait_on_watcher

from ipe import handover, http_handler

log = logging.getLogger(__name__)

REPORT_EVERY = 10.0  # seconds between log lines about closed connections
INLINE_READ = 65536  # bytes read at once by the event loop's answers (`Handler._serve_inline`)
# A deadline this close is expired by the sweep rather than waited for: the timer's clock
# is libev's, read at the start of a loop iteration, so it may fire a little early.
SLACK = 0.001


class _Waiting:
    """One connection in the HTTP phase: its descriptor, its deadline and its queue."""

    __slots__ = ("fd", "armed", "due", "queue")

    def __init__(self, sock: Any) -> None:
        # The descriptor, not the socket object: a TLS handshake moves the descriptor from
        # the accepted socket into an SSLSocket, which must be woken the same way.
        self.fd: int = sock.fileno()
        self.armed = 0.0  # time.monotonic() when its deadline started
        self.due = 0.0  # time.monotonic() when it expires
        self.queue: dict[_Waiting, None] | None = None  # the queue it is in, if any


class Deadlines:
    """The connections of one process still in the HTTP phase, each with a deadline.

    A keep-alive connection re-arms its deadline twice a request (`http_keepalive_timeout`
    for the next request, `http_timeout` once it starts) and drops it once (the response).
    A libev timer for each deadline was two timers made, started and closed a request. The
    connections wait in one queue per timeout, in the order they were armed, which is also
    the order they expire in; one timer fires at the earliest deadline of all, expires what
    is due and starts again for the next. Arming costs no timer unless its deadline is
    earlier than the one the timer waits for. A connection that leaves
    the queue early leaves the timer as it is: it then fires once for nothing.
    """

    def __init__(self, timeout: float, keepalive_timeout: float, max_connections: int) -> None:
        self.timeout = timeout
        self.keepalive_timeout = keepalive_timeout
        self.max_connections = max_connections
        # The `Keep-Alive: timeout=N` hint of responses on a kept connection. Node's http.Agent
        # (the Node SDK's, keep-alive by default since Node 19) reads it and drops an idle
        # socket a second before N, instead of reusing it just as we close it ("socket hang
        # up"). Whole seconds, rounded down: a hint may be early, never late.
        whole = int(keepalive_timeout)
        self.keepalive_hint = b"timeout=%d" % whole if whole >= 1 else b""
        # seconds -> the connections armed with it, oldest (so earliest due) first.
        self._queues: dict[float, dict[_Waiting, None]] = {}
        self._count = 0  # connections in all queues
        self._timer: Any = None  # the libev timer of the sweep, while one is pending
        self._fires_at = 0.0  # when it fires (time.monotonic())
        self.expired = 0  # deadlines missed
        self.evicted = 0  # connections closed to make room
        self._reported = (0, 0)
        self._report: Any = None  # a timer while a log line is due

    @classmethod
    def from_config(cls, config: Any) -> Deadlines:
        """The deadlines `config` (an ipe.config.Config) asks for."""
        return cls(config.http_timeout, config.http_keepalive_timeout, config.http_max_connections)

    def __len__(self) -> int:
        return self._count

    def admit(self, sock: Any) -> _Waiting:
        """A new connection: start its `http_timeout`, closing the oldest if we are full."""
        waiting = _Waiting(sock)
        self.arm(waiting, self.timeout)
        return waiting

    def arm(self, waiting: _Waiting, seconds: float) -> None:
        """(Re)start the deadline of `waiting`, which then counts as the newest."""
        if waiting.queue is not None:
            self.release(waiting)
        while self._count >= self.max_connections:
            self.evicted += 1
            self._expire(self._oldest())
        queue = self._queues.get(seconds)
        if queue is None:
            queue = self._queues[seconds] = {}
        now = time.monotonic()
        waiting.armed = now
        waiting.due = due = now + seconds
        waiting.queue = queue
        queue[waiting] = None
        self._count += 1
        if self._timer is None or due < self._fires_at:
            self._schedule(due, now)

    def release(self, waiting: _Waiting) -> None:
        """The connection has left the HTTP phase (or ended): no deadline any more."""
        queue = waiting.queue
        if queue is not None:
            del queue[waiting]
            waiting.queue = None
            self._count -= 1

    def _oldest(self) -> _Waiting:
        """The connection armed longest ago (there is one: the count is above zero)."""
        heads = [next(iter(queue)) for queue in self._queues.values() if queue]
        return min(heads, key=lambda waiting: waiting.armed)

    def _schedule(self, due: float, now: float) -> None:
        """(Re)start the sweep's timer for `due`."""
        if self._timer is not None:
            self._timer.close()
        self._fires_at = due
        self._timer = gevent.get_hub().loop.timer(max(due - now, 0.0))
        self._timer.start(self._sweep)

    def _sweep(self) -> None:
        """Expire the connections that are due; start the timer for the next deadline."""
        self._timer.close()
        self._timer = None
        now = time.monotonic()
        for queue in list(self._queues.values()):
            while queue:
                waiting = next(iter(queue))
                if waiting.due > now + SLACK:
                    break
                self.expired += 1
                self._expire(waiting)
        heads = [next(iter(queue)).due for queue in self._queues.values() if queue]
        if heads and self._timer is None:
            self._schedule(min(heads), now)

    def _closed_one(self) -> None:
        """Log what was closed, at most once every REPORT_EVERY seconds: under a flood, one
        line per connection would be the attacker's to write."""
        if self._report is None:
            self._report = gevent.get_hub().loop.timer(REPORT_EVERY)
            self._report.start(self._log_closed)

    def _log_closed(self) -> None:
        self._report.close()
        self._report = None
        expired, evicted = self._reported
        self._reported = (self.expired, self.evicted)
        log.info(
            "closed %d connections that did not send a request within http_timeout or "
            "http_keepalive_timeout, and %d to stay within http_max_connections=%d",
            self.expired - expired,
            self.evicted - evicted,
            self.max_connections,
        )

    def _expire(self, waiting: _Waiting) -> None:
        """Shut the connection down (in the hub: never blocks); its reader then sees the end.

        Through a duplicate of the descriptor: shutdown acts on the connection, so whichever
        object reads it (socket, SSLSocket mid-handshake, pywsgi's buffered file) sees EOF.
        The descriptor is still the connection's: a handler releases its deadline before
        its greenlet can yield after closing the socket.
        """
        self.release(waiting)
        self._closed_one()
        try:
            dup = _socket.socket(fileno=os.dup(waiting.fd))
        except OSError:
            return
        try:
            dup.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone
        finally:
            dup.close()


class _ReadAhead(io.RawIOBase):
    """A connection's stream with bytes already taken from the socket in front: what the
    event loop read but did not answer (`Handler._serve_inline`), then the socket's own."""

    def __init__(self, first: bytes, source: Any) -> None:
        super().__init__()
        if isinstance(source, _ReadAhead):  # one whose bytes are all read: one layer at most
            spent = source
            source = spent.source
            spent.source = None  # its close() (when collected) must not close ours
        self.source: Any = source  # the socket's raw stream
        self._first = first

    @property
    def exhausted(self) -> bool:
        """True once the bytes in front are all read."""
        return not self._first

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        first = self._first
        if first:
            n = min(len(buffer), len(first))
            buffer[:n] = first[:n]
            self._first = first[n:]
            return n
        return self.source.readinto(buffer)  # type: ignore[no-any-return]

    def fileno(self) -> int:
        return self.source.fileno()  # type: ignore[no-any-return]

    def close(self) -> None:
        if not self.closed and self.source is not None:
            self.source.close()  # the socket's stream: its reference to the socket goes
        super().close()


class Handler(http_handler.Handler):  # type: ignore[misc]
    """ipe's keep-alive handler (`ipe.http_handler`) with the deadlines of `Server.deadlines`."""

    _waiting: _Waiting | None = None

    @property
    def keepalive_hint(self) -> bytes:  # type: ignore[override]
        """The `Keep-Alive` header's value for this server's `http_keepalive_timeout`."""
        return self.server.deadlines.keepalive_hint
    _write_timeout = False  # whether the socket has the per-write timeout of a response

    def handle(self) -> None:
        """Serve the connection's requests (keep-alive), each within its deadline."""
        deadlines: Deadlines = self.server.deadlines
        if self._waiting is None:
            self._waiting = deadlines.admit(self.socket)
        try:
            super().handle()
        finally:
            deadlines.release(self._waiting)

    def handle_one_request(self) -> Any:
        """pywsgi's, after the keep-alive wait; a whole hot REST request already buffered is
        answered from the buffer (`answer_buffered`) without pywsgi's steps."""
        kept = self._requests > 0
        if kept and not self._await_request():
            return None
        try:
            answered = self.answer_buffered()
        except OSError:
            return None  # gone while its first bytes were awaited (or our deadline shut it)
        if answered is None:
            if kept and self._waiting is not None:
                # The stock steps may have to wait for the rest of the request.
                self.server.deadlines.arm(self._waiting, self.server.deadlines.timeout)
            return super().handle_one_request()
        return True if answered else None

    def _await_request(self) -> bool:
        """Wait, within `http_keepalive_timeout`, for the next request of a kept connection.
        False if the connection ended instead. No deadline runs once it has begun: a request
        answered from the buffer needs none, and `handle_one_request` arms `http_timeout`
        for one that takes the stock steps."""
        deadlines: Deadlines = self.server.deadlines
        waiting = self._waiting
        if waiting is None:
            return True
        deadlines.arm(waiting, deadlines.keepalive_timeout)
        try:
            if self.buffer_drained() and deadlines.keepalive_timeout <= deadlines.timeout:
                # Nothing buffered: wait until the socket is readable, rather than first
                # try a read that fails (EAGAIN, an exception in gevent's recv_into).
                # Without a timeout: the deadline applies. The per-write timeout stays
                # set for the next response (two settimeout calls a request fewer); a
                # read of this request that has to wait then also gets it, which ends
                # later than the request's deadline, armed first.
                sock = self.socket
                if self._inline_allowed():
                    self._serve_inline()
                else:
                    wait_on_watcher(sock._read_event, None, None, sock.hub)
            elif self._write_timeout:
                self.socket.settimeout(None)  # the deadline, not a per-read timeout
                self._write_timeout = False
            if not self.rfile.peek(1):
                return False
        except OSError:
            return False
        deadlines.release(waiting)
        return True

    def buffer_drained(self) -> bool:  # type: ignore[override]
        """`http_handler.Handler.buffer_drained`, and no bytes the event loop read ahead
        (`_ReadAhead`) are still unread: only then is there nothing to read but the socket."""
        raw = getattr(self.rfile, "raw", None)
        if isinstance(raw, _ReadAhead) and not raw.exhausted:
            return False
        return super().buffer_drained()

    def _inline_allowed(self) -> bool:
        """Whether the next requests may be answered in the event loop (`_serve_inline`):
        the app's lean routes touch only memory (no Redis, apps from the config), the
        lane is open and the socket is plain (and, as `buffer_drained` said, nothing is
        left to read but the socket)."""
        inline = getattr(self.server.application, "ipe_inline", None)
        if inline is None or not inline() or not self.lane_open():
            return False
        return handover.plain_socket(self.socket) is not None

    def _serve_inline(self) -> None:
        """Wait for the next request in the event loop, answering there each whole hot REST
        request that arrives, without a switch to this greenlet, the handler's loop or a
        deadline a request; return once the connection needs the greenlet: another kind of
        request (its bytes go back in front of `rfile`), the end of the stream, a reply the
        socket did not take whole (sent here, with the write timeout), or an error."""
        sock = self.socket
        raw = handover.plain_socket(sock)
        waiter = Waiter(sock.hub)
        watcher = sock.hub.loop.io(raw.fileno(), 1)
        watcher.start(self._on_inline_readable, raw, waiter)
        try:
            unsent = waiter.get()
        finally:
            watcher.stop()
            watcher.close()
        if unsent:
            # A response being written: the write timeout bounds it, as for any response,
            # not the keep-alive deadline; that one starts again once it is out.
            deadlines: Deadlines = self.server.deadlines
            waiting = self._waiting
            if waiting is not None:
                deadlines.release(waiting)
            if not self._write_timeout:
                sock.settimeout(deadlines.timeout)
                self._write_timeout = True
            sock.sendall(unsent)
            if waiting is not None:
                deadlines.arm(waiting, deadlines.keepalive_timeout)

    def _on_inline_readable(self, raw: Any, waiter: Waiter) -> None:
        """libev callback (in the hub: never blocks): answer the whole lean requests that
        arrived; hand anything else to the greenlet (`waiter`)."""
        unsent: bytes | None = None
        try:
            data = raw.recv(INLINE_READ)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # the greenlet's next read reports it
        try:
            while data:
                found = self.lane_answer(data)
                if found is None:
                    break
                size, reply = found
                data = data[size:]
                out = self.reply_bytes(*reply)
                try:
                    sent = raw.send(out)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    data = b""
                    break
                if sent < len(out):
                    unsent = bytes(out[sent:])
                    break
                if not data:  # all answered: idle again, still here
                    deadlines: Deadlines = self.server.deadlines
                    if self._waiting is not None:
                        deadlines.arm(self._waiting, deadlines.keepalive_timeout)
                    return
        except Exception:  # a bug here must not take the event loop with it
            log.exception("error answering a request in the event loop")
            data = b""
            unsent = None
            try:
                raw.shutdown(socket.SHUT_RDWR)  # the greenlet then sees the end and closes
            except OSError:
                pass
        if data:
            self.rfile = io.BufferedReader(_ReadAhead(data, self.rfile.detach()))
        waiter.switch(unsent)

    def read_requestline(self) -> str:
        """The next request line (awaited by `handle_one_request`)."""
        self._requests += 1
        line: str = super().read_requestline()
        if line and not line.endswith("\n") and len(line) < MAX_REQUEST_LINE:
            # Cut off by the end of the stream (our deadline, or the client): pywsgi would
            # serve "GET /hea" as an HTTP/0.9 request and log it. Close without an answer.
            return ""
        return line

    def start_response(self, status: Any, headers: Any, exc_info: Any = None) -> Any:
        """The response starts: the request has been read, the HTTP phase is over.

        A WebSocket (`101`) or an HTTP-fallback stream then lives as long as it is used.
        Other responses are written with a per-write timeout of `http_timeout` instead, so
        that a client that never reads a response cannot hold its handler for ever.
        """
        self.response_starting(status)
        return super().start_response(status, headers, exc_info)

    def response_starting(self, status: str) -> None:
        """The HTTP phase ends: no deadline; a per-write timeout unless it is a `101`."""
        deadlines: Deadlines = self.server.deadlines
        if self._waiting is not None:
            deadlines.release(self._waiting)
        if self._write_timeout and str(status).startswith("101"):
            self.socket.settimeout(None)  # a WebSocket after a kept connection's responses
            self._write_timeout = False
        elif (
            not self._write_timeout
            and not str(status).startswith("101")
            and self.socket is not None
        ):
            self.socket.settimeout(deadlines.timeout)
            self._write_timeout = True


class Server(WSGIServer):  # type: ignore[misc]
    """pywsgi's server with `Handler`, shared deadlines, and no cap on handler greenlets."""

    handler_class = Handler

    def __init__(
        self,
        listener: Any,
        application: Any = None,
        *,
        deadlines: Deadlines,
        spawn: Any = "default",
        **kwargs: Any,
    ) -> None:
        if isinstance(spawn, gevent.pool.Pool):
            # gunicorn's pool of `worker_connections`: a full pool stops accepting, which
            # must not happen because of open TLS WebSockets or half-open sockets (the
            # deadlines bound those). A pool of practically unbounded size keeps gunicorn's
            # drain check (free_count() == size once no handler runs) working.
            spawn = gevent.pool.Pool(2**31 - 1)  # the largest a gevent Semaphore takes
        kwargs["handler_class"] = Handler
        super().__init__(listener, application, spawn=spawn, **kwargs)
        self.deadlines = deadlines

    def handle(self, sock: Any, address: Any) -> None:
        """Serve a plain connection (the deadline starts in the handler)."""
        self._serve(sock, address, None)

    def wrap_socket_and_handle(self, client_socket: Any, address: Any) -> None:
        """Serve a TLS connection: the deadline covers the handshake too."""
        waiting = self.deadlines.admit(client_socket)
        try:
            ssl_socket = self.wrap_socket(client_socket, **self.ssl_args)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self.deadlines.release(waiting)
            log.debug("TLS handshake with %s failed: %s", address, exc)
            return
        self._serve(ssl_socket, address, waiting)

    def _serve(self, sock: Any, address: Any, waiting: _Waiting | None) -> None:
        handler = self.handler_class(sock, address, self)
        handler._waiting = waiting
        handler.handle()


def install(worker: Any) -> None:
    """Make a gunicorn gevent worker serve with `Server` and `Handler` (gunicorn.conf.py's
    post_worker_init), whichever gevent worker class `-k` named."""
    config = worker.wsgi.extensions["ipe"].config
    worker.server_class = functools.partial(Server, deadlines=Deadlines.from_config(config))
    worker.wsgi_handler = Handler
