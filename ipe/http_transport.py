"""pusher-js's HTTP fallback transports, `xhr_streaming` and `xhr_polling`, for clients whose
WebSocket cannot get through (a proxy that refuses the upgrade).

pusher-js opens `{httpPath}/app/{key}/{server}/{session}/xhr_streaming` (or `.../xhr` to poll)
with POST, and sends with POST `.../xhr_send` a JSON array of messages. Every response is a
series of lines, one frame each (pusher-js's `src/core/http/http_socket.ts` parses them):

    o                     the session is open (only once: a second one is "Server lost session")
    a["<event json>",...] messages, each the JSON text of one Pusher event
    h                     heartbeat (streaming: the client answers with an empty send)
    c[4001,"reason"]      the session is closed with that code

A streaming response stays open and carries frames as they come; pusher-js itself replaces it
once it holds 256 KB (`buffer_too_long`), and ends the session when a response ends. So ipe
writes nothing more on a stream past `RECYCLE_CHARS` (pusher-js aborts it: anything written
would be lost) and keeps the messages for the next one; a stream nobody replaces within
`RECYCLE_WAIT` ends (a client that never recycles reconnects). A polling response carries
what waits, or waits for the next message up to `POLL_WAIT`, then ends; pusher-js polls again.

An idle session costs no greenlet: ipe's HTTP handler hands the socket of a stream (or of a
poll that has to wait) over once the headers are out (`ipe.handover`, as for a WebSocket
after its upgrade), and lines are written to it from whatever queues them, heartbeats and
poll timeouts by the sweeper (`_SocketStream`); an answered poll's connection goes back to
the HTTP server (keep-alive). A poll answered at once, a TLS connection and a request relayed
from another process are generators a request's greenlet iterates.

`HttpClient` is a `Client` like a WebSocket `Connection`: `Session`, the hub and everything
above see no difference. Its outgoing messages wait in a bounded queue (`max_outbox_bytes`,
then 4100) until a receive request takes them; a session that no request picks up for
`http_session_timeout` seconds is closed and cleaned up like a dropped socket.

Sessions live in the process that opened them. Under several processes sharing Redis
(gunicorn workers, or hosts behind a load balancer) a request may reach another process:
`state.http_router` (`ipe.redis.http_routing.HttpRouter`, None without Redis) then carries it
to the owner: an `xhr_send` is forwarded, a receive request relays the owner's lines.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event
import gevent.lock

from ipe import forwarded, protocol
from ipe.connection import CLOSING, ENDED, OPEN, Client

if TYPE_CHECKING:
    from ipe.app import State

log = logging.getLogger(__name__)

# {httpPath}/app/{key}/{server}/{session}/{kind}: pusher-js makes server a number below 1000
# and session 8 base-32 characters; anything of a sane size is accepted.
HTTP_PATH = re.compile(
    r"(?:/[^/]*)*/app/([^/]{1,256})/([0-9A-Za-z_-]{1,32})/([0-9A-Za-z_-]{1,64})"
    r"/(xhr_streaming|xhr|xhr_send)"
)
# pusher-js's MAX_BUFFER_LENGTH: once a stream's response text is longer and all read, pusher-js
# aborts it and opens a new one for the session (our lines are ASCII: bytes are characters).
RECYCLE_CHARS = 256 * 1024
RECYCLE_WAIT = 10.0  # seconds a full stream waits for the client's next one, then ends
POLL_WAIT = 25.0  # seconds a poll waits for a message before answering a heartbeat
HEARTBEAT = 25.0  # seconds of silence on a stream before a heartbeat line
MAX_SEND_BODY = 1 << 20  # bytes of one xhr_send body (its messages are checked one by one)
SWEEP_INTERVAL = 1.0
# A receive request whose client hung up (pusher-js's disconnect() just aborts it): the session
# ends this long after, unless the client comes back (it recycles a stream that way).
HANGUP_GRACE = 2.0

_OPEN_LINE = b"o\n"
_HEARTBEAT_LINE = b"h\n"
# Each message's JSON text, escaped once as a JSON string: a publish offers the same frame
# bytes to every subscriber, so the first HTTP client escapes it and the others find it here.
_escaped: dict[bytes, bytes] = {}
_ESCAPED_MAX = 256


def _payload(frame: bytes) -> bytes:
    """The payload of a server-built (unmasked) WebSocket text frame."""
    length = frame[1] & 0x7F
    return frame[2:] if length < 126 else frame[4:] if length == 126 else frame[10:]


def _escape(payload: bytes) -> bytes:
    escaped = _escaped.get(payload)
    if escaped is None:
        escaped = json.dumps(payload.decode("utf-8")).encode()
        if len(_escaped) >= _ESCAPED_MAX:
            _escaped.clear()
        _escaped[payload] = escaped
    return escaped


def close_line(code: int, reason: str) -> bytes:
    """The frame that ends a session with `code`."""
    return b"c" + json.dumps([code, reason], separators=(",", ":")).encode() + b"\n"


class HttpClient(Client):
    """One pusher-js session over HTTP: a queue of outgoing messages, and at most one receive
    request (a stream or a poll) attached at a time.

    A stream (or a poll that has to wait) served by ipe's own handler is a `_SocketStream`:
    lines are written to its socket as they come, from whatever queued them, and no greenlet
    waits for an idle one. Any other receive request (a poll answered at once, one over TLS,
    one relayed through Redis) is a generator that waits in its greenlet for `_wake`.
    """

    __slots__ = (
        "sid",
        "_queue",
        "_queued_bytes",
        "_max_outbox",
        "_on_overflow",
        "_wake",
        "_closing_line",
        "_opened",
        "_receiver",
        "_stream",
        "_detached_at",
        "_hung_up",
        "_lock",
        "_ended",
        "_registry",
    )

    def __init__(
        self,
        registry: HttpSessions,
        sid: str,
        app: Any,
        socket_id: str,
        max_outbox: int,
        on_overflow: Any = None,
    ) -> None:
        super().__init__(app, socket_id)
        self._registry = registry
        self.sid = sid
        # Escaped messages waiting for a receive request; None while empty (most of the time
        # for a session with a stream attached: no empty container for life).
        self._queue: list[bytes] | None = None
        self._queued_bytes = 0
        self._max_outbox = max_outbox
        self._on_overflow = on_overflow
        self._wake: gevent.event.Event | None = None  # made by the first waiting request
        self._closing_line: bytes | None = None
        self._opened = False  # the "o" frame has gone out
        self._receiver = 0  # id of the receive request attached (0: none)
        self._stream: _SocketStream | None = None  # the receiver, when it is a socket of ours
        self._detached_at = time.monotonic()
        self._hung_up = False  # the last receive request ended with its client gone
        self._lock: gevent.lock.Semaphore | None = None  # one xhr_send at a time, in order
        self._ended = False

    # --- what Session and the hub call --------------------------------------------------------

    def start(self) -> None:
        """Nothing to start: requests drive an HTTP session."""

    def send(self, data: bytes) -> bool:
        """Queue one pre-built WebSocket text frame's message; False if closing."""
        if self.state is not OPEN:
            return False
        return self._enqueue(_escape(_payload(data)))

    def send_event(self, payload: bytes) -> bool:
        """Queue one JSON payload for this client only."""
        if self.state is not OPEN:
            return False
        return self._enqueue(json.dumps(payload.decode("utf-8")).encode())

    def close(self, code: int, reason: str = "", error: bool = False) -> None:
        """End the session with `code` (after a pusher:error with `error`)."""
        if self.state is not OPEN:
            return
        if error:
            self._enqueue(json.dumps(protocol.encode_error(code, reason).decode()).encode())
        self.state = CLOSING
        self.close_code = code
        # The next receive request hears it (and the session ends); if none comes, the
        # sweep ends it after http_session_timeout.
        self._closing_line = close_line(code, reason)
        self._notify()

    # --- the queue ----------------------------------------------------------------------------

    def _enqueue(self, escaped: bytes) -> bool:
        stream = self._stream
        if stream is not None and stream.writable and self._queue is None:
            if self.tally is not None:
                self.tally.bytes_out += len(escaped)
            self._write_line(stream, b"a[" + escaped + b"]\n")  # nothing waits: straight out
            return True
        backlog = stream.backlog if stream is not None else 0
        if self._queued_bytes + backlog + len(escaped) > self._max_outbox:
            log.warning("closing %r: %d bytes wait for it (slow consumer)", self, self._max_outbox)
            if self._on_overflow is not None:
                self._on_overflow()
            self._queue = None
            self._queued_bytes = 0
            self.close(protocol.OVER_CAPACITY, "Client is not reading fast enough")
            return False
        if self._queue is None:
            self._queue = [escaped]
        else:
            self._queue.append(escaped)
        self._queued_bytes += len(escaped)
        if self.tally is not None:
            self.tally.bytes_out += len(escaped)
        self._notify()
        return True

    def _notify(self) -> None:
        """Something waits: write it to a socket stream, or wake a waiting request."""
        if self._stream is not None:
            self._push()
        elif self._wake is not None:
            self._wake.set()

    def _take(self) -> bytes | None:
        """Everything queued as one `a[...]` line (or the close line once drained); None if
        nothing waits."""
        if self._queue:
            items = self._queue
            self._queue = None
            self._queued_bytes = 0
            return b"a[" + b",".join(items) + b"]\n"
        if self._closing_line is not None:
            line, self._closing_line = self._closing_line, None
            gevent.spawn(self.end)
            return line
        return None

    # --- a receive request on a socket of ours ------------------------------------------------

    def has_news(self) -> bool:
        """True if a receive request would be answered at once (a poll need not wait)."""
        return not self._opened or bool(self._queue) or self._closing_line is not None

    def adopt(self, sock: Any, chunked: bool, give_back: Any = None) -> None:
        """Serve a stream (or, with `give_back`, a waiting poll) on `sock`, its response's
        headers written: lines are written as they come, by whoever queues them. A poll's
        socket goes back to the HTTP server (`give_back(sock)`) once answered."""
        receiver = self._attach()
        timeout = self._registry.state.config.http_timeout
        stream = _SocketStream(self, receiver, sock, chunked, timeout, give_back)
        self._stream = stream
        if give_back is None:
            if not self._opened:
                self._opened = True
                self._write_line(stream, _OPEN_LINE)
            else:
                # A recycled stream: as in `stream`, a heartbeat first.
                self._write_line(stream, _HEARTBEAT_LINE)
        self._push()
        if self._ended:  # while the headers went out: nothing more will come
            self._let_go()

    def _push(self) -> None:
        """Write what waits to the socket stream, as far as it takes it without blocking."""
        stream = self._stream
        while stream is not None and stream.writable:
            line = self._take()
            if line is None:
                return
            self._write_line(stream, line)
            stream = self._stream

    def _write_line(self, stream: _SocketStream, line: bytes) -> None:
        stream.write(line)
        if stream.poll or line.startswith(b"c"):
            stream.finish()  # a poll carries one line; the close line ends a stream
        elif stream.sent > RECYCLE_CHARS:
            # pusher-js aborts this request once it has read it all and opens another one: a
            # line written from now on would be lost with it. Messages wait in the queue.
            stream.full = True

    def heartbeat(self, now: float) -> None:
        """A heartbeat line on a socket stream silent for HEARTBEAT seconds (the answer to a
        poll that waited POLL_WAIT); the end of a full stream nobody replaced in RECYCLE_WAIT
        (a client that never recycles: it reconnects with a new session)."""
        stream = self._stream
        if stream is None or stream.busy:
            return
        if stream.full:
            if now - stream.last >= RECYCLE_WAIT:
                stream.finish()
        elif now - stream.last >= (POLL_WAIT if stream.poll else HEARTBEAT):
            self._write_line(stream, _HEARTBEAT_LINE)

    def _let_go(self) -> None:
        """End the socket stream attached: replaced by another request, or the session ended.
        A poll gets its answer, a heartbeat, as a waiting generator's does."""
        stream = self._stream
        if stream is not None:
            if stream.poll and stream.writable:
                self._write_line(stream, _HEARTBEAT_LINE)
            stream.finish()

    def _stream_ended(self, stream: _SocketStream, hung_up: bool) -> None:
        """Called by a socket stream once it is over (finished, or its client gone)."""
        if self._stream is stream:
            self._stream = None
        self._detach(stream.receiver, hung_up)

    # --- receive requests ---------------------------------------------------------------------

    def _waker(self) -> gevent.event.Event:
        if self._wake is None:
            self._wake = gevent.event.Event()
        return self._wake

    def _attach(self) -> int:
        self._registry.next_receiver += 1
        self._receiver = self._registry.next_receiver
        self._hung_up = False
        self._let_go()  # replaced: pusher-js recycles a full stream, polls again after a hang-up
        self._stream = None  # even one still writing its backlog: it finishes by itself
        if self._wake is not None:
            self._wake.set()  # a receiver still waiting gives way (it sees it is not current)
        self.last_seen = time.monotonic()
        return self._receiver

    def _detach(self, receiver: int, hung_up: bool) -> None:
        if self._receiver == receiver:
            self._receiver = 0
            self._hung_up = hung_up
            self._detached_at = time.monotonic()

    def stream(self, hangup: _Hangup) -> Iterator[bytes]:
        """The body of an `xhr_streaming` response: frames as they come (a greenlet waits
        for each; see `adopt` for a stream without)."""
        me = self._attach()
        wake = self._waker()
        hangup.notify(wake)
        try:
            if not self._opened:
                self._opened = True
                first = _OPEN_LINE
            else:
                # A recycled stream: headers go out with the first line, and a client (or a
                # proxy) should not wait for them until there is news. Pusher's own server
                # opens every stream with heartbeats too.
                first = _HEARTBEAT_LINE
            sent = len(first)
            yield first
            while self._receiver == me and not self._ended and not hangup.seen:
                line = self._take()
                if line is None:
                    wake.clear()
                    if not wake.wait(HEARTBEAT):
                        line = _HEARTBEAT_LINE
                    else:
                        continue
                sent += len(line)
                yield line
                if line.startswith(b"c"):
                    return
                if sent > RECYCLE_CHARS:
                    # pusher-js aborts this request once it has read it all and opens another
                    # one: a line written from now on would be lost with the aborted request.
                    self._await_successor(me, hangup)
                    return
        finally:
            hangup.stop()
            self._detach(me, hangup.seen)

    def _await_successor(self, me: int, hangup: _Hangup) -> None:
        """Write nothing more on a full stream (messages wait in the queue) until pusher-js's
        next request takes over or the client hangs up; a client that never comes ends it after
        RECYCLE_WAIT (it then reconnects with a new session)."""
        deadline = time.monotonic() + RECYCLE_WAIT
        # Polled rather than waited on `_wake`: clearing that event here could take a wake-up
        # from the next stream, which waits on it; this lasts a round trip, once per 256 KB.
        while self._receiver == me and not self._ended and not hangup.seen:
            if time.monotonic() >= deadline:
                return
            gevent.sleep(0.02)

    def poll(self, hangup: _Hangup) -> Iterator[bytes]:
        """The body of an `xhr` (polling) response: what waits, or the next message."""
        me = self._attach()
        wake = self._waker()
        hangup.notify(wake)
        try:
            if not self._opened:
                self._opened = True
                yield _OPEN_LINE
                return
            line = self._take()
            if line is None:
                wake.clear()
                deadline = time.monotonic() + POLL_WAIT
                while line is None and self._receiver == me and not self._ended:
                    left = deadline - time.monotonic()
                    if hangup.seen or left <= 0 or not wake.wait(left):
                        break
                    wake.clear()
                    line = self._take()
            if not hangup.seen:
                yield line if line is not None else _HEARTBEAT_LINE
        finally:
            hangup.stop()
            self._detach(me, hangup.seen)

    def receive(self, messages: list[str]) -> None:
        """Handle the messages of one `xhr_send`, in order."""
        self.last_seen = time.monotonic()
        self.ping_sent = 0.0
        if self.tally is not None:
            self.tally.bytes_in += sum(len(text) for text in messages)
        if self._lock is None:
            self._lock = gevent.lock.Semaphore()
        with self._lock:
            for text in messages:
                if self.state is not OPEN:
                    return
                try:
                    self.on_message(text)
                except Exception:
                    log.exception("error handling a message on %r", self)

    # --- the end ------------------------------------------------------------------------------

    def end(self) -> None:
        """The session is over: clean up once (member_removed, vacated, ...)."""
        if self._ended:
            return
        self._ended = True
        if self.state is OPEN:
            self.state = CLOSING
            if self.close_code is None:
                self.close_code = protocol.WS_GOING_AWAY
        if self._wake is not None:
            self._wake.set()
        self._let_go()
        self._registry.forget(self)
        try:
            self.on_end()
        except Exception:
            log.exception("error cleaning up %r", self)
        self.state = ENDED

    def abandoned(self, now: float, timeout: float) -> bool:
        """True if no request has picked the session up for `timeout` seconds (or for
        HANGUP_GRACE after its client hung up on one)."""
        if self._receiver:
            return False
        idle = now - max(self._detached_at, self.last_seen)
        return idle >= (min(HANGUP_GRACE, timeout) if self._hung_up else timeout)


class _SocketStream:
    """An `xhr_streaming` response (or an `xhr` poll that has to wait) whose socket ipe took
    over from pywsgi after the headers.

    Lines are written without blocking, as chunks (or raw to an HTTP/1.0 client); whatever
    the kernel does not take is finished by a greenlet that exists only while there is a
    backlog (counted against `max_outbox_bytes` with the session's queue), with a timeout of
    `http_timeout`. A libev watcher notices the client hanging up. That is all an idle stream
    holds: the socket, this object and the watcher. A stream's connection closes with it; a
    poll's goes back to the HTTP server for the client's next request (keep-alive).
    """

    __slots__ = (
        "client",
        "receiver",
        "sent",
        "last",
        "busy",
        "full",
        "backlog",
        "_sock",
        "_raw",
        "_chunked",
        "_watcher",
        "_finishing",
        "_closed",
        "_give_back",
    )

    def __init__(
        self,
        client: HttpClient,
        receiver: int,
        sock: Any,
        chunked: bool,
        timeout: float,
        give_back: Any = None,
    ) -> None:
        self.client = client
        self.receiver = receiver
        self._give_back = give_back
        self.sent = 0  # bytes of lines written
        self.last = time.monotonic()  # when the last line was written
        self.busy = False  # a greenlet is writing the backlog
        self.full = False  # past RECYCLE_CHARS: nothing more is written (see _write_line)
        self.backlog = 0  # bytes it has still to write
        sock.settimeout(timeout)
        self._sock = sock
        self._raw = sock._sock  # the OS socket (non-blocking) inside gevent's
        self._chunked = chunked
        self._finishing = False
        self._closed = False
        self._watcher = gevent.get_hub().loop.io(self._raw.fileno(), 1)
        self._watcher.start(self._on_readable)

    def write(self, line: bytes) -> None:
        """Write one line now, or leave its unsent rest to the writer greenlet (not busy)."""
        if self._closed:
            return
        data = b"%x\r\n%s\r\n" % (len(line), line) if self._chunked else line
        self.sent += len(line)
        self.last = time.monotonic()
        try:
            sent = self._raw.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._lost(True)
            return
        if sent < len(data):
            self.busy = True
            self.backlog = len(data) - sent
            gevent.spawn(self._drain, data[sent:])

    def _drain(self, rest: bytes) -> None:
        """Write the backlog with cooperative blocking, then whatever queued meanwhile."""
        try:
            self._sock.sendall(rest)
        except OSError as exc:  # a timeout too: the client does not read (it may come back)
            self._lost(not isinstance(exc, TimeoutError))
            return
        finally:
            self.busy = False
            self.backlog = 0
        if self._finishing:
            self.finish()
        else:
            self.client._push()

    @property
    def writable(self) -> bool:
        """True if a line can be written now (else it waits in the session's queue)."""
        return not (self.busy or self.full or self._closed)

    @property
    def poll(self) -> bool:
        """True for a poll (one line, then the connection goes back to the HTTP server)."""
        return self._give_back is not None

    def finish(self) -> None:
        """End the response (once the backlog is written): close the connection, or give a
        poll's back to the HTTP server."""
        if self._closed:
            return
        self._finishing = True
        if self.busy:
            return  # the writer finishes it
        ended = not self._chunked
        if self._chunked:
            try:
                ended = self._raw.send(b"0\r\n\r\n") == 5  # the kernel takes 5 bytes, or we drop
            except OSError:
                pass
        if self._give_back is None or not ended or not self._chunked:
            self._close(False)
            return
        # The response is complete: the connection serves the client's next request.
        self._closed = True
        self._stop_watching()
        self.client._stream_ended(self, False)
        sock, self._sock = self._sock, None
        sock.settimeout(None)
        self._give_back(sock)

    def _on_readable(self) -> None:
        """libev callback (in the hub: never blocks). The end of the connection means the
        client hung up (pusher-js's disconnect() aborts the request). Bytes before that: on a
        stream's connection (Connection: close) they are dropped; on a poll's they are the
        next request, left for the HTTP server (no more watching for a hang-up then)."""
        try:
            data = self._raw.recv(1, socket.MSG_PEEK)
            if data and not self.poll:
                data = self._raw.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lost(True)
        elif self.poll:
            self._stop_watching()

    def _lost(self, hung_up: bool) -> None:
        """The connection failed (or the client left): the session waits for its next
        request, HANGUP_GRACE if the client `hung_up`, else http_session_timeout."""
        self._close(hung_up)

    def _stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.close()
            self._watcher = None

    def _close(self, hung_up: bool) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_watching()
        try:
            self._sock.close()  # a writer blocked on it fails (and returns)
        except OSError:
            pass
        self.client._stream_ended(self, hung_up)


class _Hangup:
    """Notices that the client of a waiting response closed its connection: pusher-js's
    disconnect() only aborts its request, and nothing is written to a stream that has nothing
    to say, so without this a gone client would hold its session for http_session_timeout."""

    __slots__ = ("seen", "_sock", "_watcher", "_wake")

    def __init__(self, environ: dict[str, Any]) -> None:
        self.seen = False
        self._wake: gevent.event.Event | None = None
        self._watcher: Any = None
        # pywsgi (also under gunicorn's gevent workers) reads the request through a file made
        # by socket.makefile(): its raw SocketIO holds gevent's socket, which holds the OS one.
        rfile = getattr(environ.get("wsgi.input"), "rfile", None)
        gsock = getattr(getattr(rfile, "raw", None), "_sock", None)
        self._sock = getattr(gsock, "_sock", None)

    def notify(self, wake: gevent.event.Event) -> None:
        """Set `wake` when the client hangs up."""
        if self._sock is None:
            return  # another server: a hang-up is noticed at the next write
        self._wake = wake
        try:
            self._watcher = gevent.get_hub().loop.io(self._sock.fileno(), 1)
            self._watcher.start(self._readable)
        except (OSError, ValueError):
            self._watcher = None

    def _readable(self) -> None:
        try:
            data = self._sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self.stop()
        if not data:  # EOF: the client is gone (bytes instead: a pipelined request, let it be)
            self.seen = True
            if self._wake is not None:
                self._wake.set()

    def stop(self) -> None:
        """Stop watching (the response is over)."""
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.close()
            self._watcher = None


class _Response:
    """The body of a local `xhr_streaming` response, or of a poll that has to wait. ipe's
    HTTP handler (`ipe.http_handler`) hands it the socket once the headers are out (`adopt`);
    any other server, or a TLS connection, iterates it like any WSGI body, a greenlet waiting
    for every line."""

    __slots__ = ("_client", "_environ", "_poll", "_lines")

    def __init__(self, client: HttpClient, environ: dict[str, Any], poll: bool) -> None:
        self._client = client
        self._environ = environ
        self._poll = poll
        self._lines: Iterator[bytes] | None = None

    def adopt(self, sock: Any, chunked: bool, give_back: Any) -> None:
        """The response goes on on `sock`, which is the session's now; a poll hands it to
        `give_back` once answered (None: it closes it instead)."""
        self._environ = None  # type: ignore[assignment]
        if self._poll:
            self._client.adopt(sock, chunked, give_back or _close_socket)
        else:
            self._client.adopt(sock, chunked)

    def __iter__(self) -> Iterator[bytes]:
        hangup = _Hangup(self._environ)
        receive = self._client.poll if self._poll else self._client.stream
        self._lines = receive(hangup)
        return self._lines

    def close(self) -> None:
        """WSGI's close(): the generator's cleanup runs now, not whenever it is collected."""
        if self._lines is not None:
            self._lines.close()  # type: ignore[attr-defined]


class HttpSessions:
    """This process's HTTP sessions by id, and the sweeper that ends abandoned ones."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.sessions: dict[str, HttpClient] = {}
        self.next_receiver = 0
        self._sweeper: gevent.Greenlet | None = None

    def forget(self, client: HttpClient) -> None:
        """Drop an ended session."""
        if self.sessions.get(client.sid) is client:
            del self.sessions[client.sid]
            if self.state.http_router is not None:
                self.state.http_router.ended(client.sid)

    def start(self) -> None:
        """Start ending abandoned sessions (once per process, after fork)."""
        if self._sweeper is None:
            self._sweeper = gevent.spawn(self._sweep_forever)

    def stop(self) -> None:
        """Stop the sweeper."""
        if self._sweeper is not None:
            self._sweeper.kill(block=False)
            self._sweeper = None

    def _sweep_forever(self) -> None:
        while True:
            gevent.sleep(SWEEP_INTERVAL)
            try:
                self.sweep(time.monotonic())
            except Exception:  # never let the sweeper die: sessions would pile up
                log.exception("HTTP session sweep failed")

    def sweep(self, now: float) -> None:
        """End every session no request picked up for `http_session_timeout`; a heartbeat
        on every socket stream silent for HEARTBEAT seconds (one pass, no timer each)."""
        timeout = self.state.config.http_session_timeout
        abandoned = []
        for client in self.sessions.values():
            if client.abandoned(now, timeout):
                abandoned.append(client)
            else:
                client.heartbeat(now)
        for client in abandoned:
            log.info("HTTP session %s abandoned after %.0fs", client.sid, timeout)
            if client.close_code is None:
                client.close_code = protocol.WS_GOING_AWAY
            client.end()

    # --- requests -----------------------------------------------------------------------------

    def serve(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """Answer one request of pusher-js's HTTP transports (WSGI)."""
        match = HTTP_PATH.fullmatch(environ.get("PATH_INFO", ""))
        headers = _cors(environ)
        method = environ.get("REQUEST_METHOD", "")
        if match is None:
            return _answer(start_response, "404 Not Found", headers, b'{"error":"Not found"}')
        if method == "OPTIONS":
            headers.append(("Access-Control-Max-Age", "86400"))
            return _answer(start_response, "204 No Content", headers, b"")
        if method not in ("POST", "GET"):
            headers.append(("Allow", "POST, OPTIONS"))
            return _answer(start_response, "405 Method Not Allowed", headers, b"")
        key, server, session, kind = match.groups()
        sid = f"{key}/{server}/{session}"
        client = self.sessions.get(sid)
        router = self.state.http_router
        # Another process may hold the session (its requests reach any of them).
        owner = router.owner_of(sid) if client is None and router is not None else None
        if kind == "xhr_send":
            if owner is None and (client is None or client.app.key != key):
                return _answer(start_response, "404 Not Found", headers, b"")
            messages = _read_messages(environ)
            if messages is None:
                return _answer(start_response, "400 Bad Request", headers, b"")
            if client is None:
                router.forward_send(owner, sid, json.dumps(messages).encode())
            else:
                client.receive(messages)
            return _answer(start_response, "204 No Content", headers, b"")
        if client is None and owner is None and self._full():
            headers.append(("Retry-After", "5"))
            body = b'{"error":"Too many HTTP sessions"}'
            return _answer(start_response, "503 Service Unavailable", headers, body)
        headers.append(("Content-Type", "application/javascript; charset=UTF-8"))
        headers.append(("Cache-Control", "no-store, no-cache, must-revalidate, max-age=0"))
        if client is None and owner is None:
            client = self._open(environ, sid, key)
        if kind == "xhr_streaming" and client is not None:
            # The stream's connection ends with it (a socket of ours: no next request on it).
            headers.append(("Connection", "close"))
            start_response("200 OK", headers)
            return _Response(client, environ, poll=False)
        start_response("200 OK", headers)
        if client is not None and not client.has_news():
            return _Response(client, environ, poll=True)  # it waits: no greenlet for that
        hangup = _Hangup(environ)
        if client is None:
            return router.relay(
                owner,
                sid,
                kind,
                hangup,
                lambda: self._receive_here(environ, sid, key, kind, hangup),
            )
        return client.poll(hangup)

    def _full(self) -> bool:
        """True (logged) when this process holds `http_max_sessions` sessions."""
        if len(self.sessions) < self.state.config.http_max_sessions:
            return False
        log.warning("refusing an HTTP session: %d are open", len(self.sessions))
        return True

    def _receive_here(
        self, environ: dict[str, Any], sid: str, key: str, kind: str, hangup: _Hangup
    ) -> Iterator[bytes]:
        """A receive request for a session whose owner is gone: open it here (pusher-js hears
        a second "o", "Server lost session", and reconnects), as for any unknown session."""
        client = self.sessions.get(sid)
        if client is None:
            if self._full():
                return
            client = self._open(environ, sid, key)
        yield from client.stream(hangup) if kind == "xhr_streaming" else client.poll(hangup)

    def _open(self, environ: dict[str, Any], sid: str, key: str) -> HttpClient:
        """A new session: the same handshake as a WebSocket's, then a Session over it."""
        from ipe import session

        state = self.state
        handshake = dict(environ)
        handshake["PATH_INFO"] = f"/app/{key}"
        app, code, message = session.handshake_error(handshake, state)
        client = HttpClient(
            self,
            sid,
            app,
            protocol.new_socket_id(),
            max_outbox=state.config.max_outbox_bytes,
            on_overflow=state.metrics.slow_consumer_closes.inc,
        )
        self.sessions[sid] = client
        if state.http_router is not None:
            state.http_router.opened(sid)
        log.debug("HTTP session %s opened for %s", sid, key[:64])
        if code is not None:
            log.info("refused HTTP session for %s: %d %s", key[:64], code, message)
            client.close(code, message, error=True)
        else:
            remote = forwarded.client_address(environ, state.config.trusted_proxies)
            session.open_client(state, client, app, remote)
        return client


def _close_socket(sock: Any) -> None:
    """What a poll's socket gets when no HTTP server takes it back."""
    try:
        sock.close()
    except OSError:
        pass


def _read_messages(environ: dict[str, Any]) -> list[str] | None:
    """The messages of an xhr_send body (a JSON array of strings), or None if it is not one."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    if not 0 < length <= MAX_SEND_BODY:
        return None
    try:
        body = environ["wsgi.input"].read(length)
        messages = json.loads(body)
    except (OSError, ValueError):
        return None
    if not isinstance(messages, list) or not all(isinstance(m, str) for m in messages):
        return None
    return messages


def _cors(environ: dict[str, Any]) -> list[tuple[str, str]]:
    """pusher-js's browser build calls these routes cross-origin (credentials included)."""
    origin = environ.get("HTTP_ORIGIN")
    if not origin:
        return []
    return [
        ("Access-Control-Allow-Origin", origin),
        ("Access-Control-Allow-Credentials", "true"),
        ("Access-Control-Allow-Methods", "POST, GET, OPTIONS"),
        ("Access-Control-Allow-Headers", "Content-Type"),
        ("Vary", "Origin"),
    ]


def _answer(
    start_response: Any, status: str, headers: list[tuple[str, str]], body: bytes
) -> list[bytes]:
    headers.append(("Content-Length", str(len(body))))
    if body:
        headers.append(("Content-Type", "application/json"))
    start_response(status, headers)
    return [body]
