"""gevent-websocket's request handler, with the per-request costs of keep-alive HTTP cut.

A backend publishing over a persistent connection pays pywsgi's handler on every request. These
of its costs are not needed:

- Headers are parsed by the `email` package (a feed parser built per request). Ordinary header
  lines (`Name: value`, one per line) are split here into the same message object (the
  whole block by one regex when it is already buffered); anything else (folded lines, a
  line that is not a header) goes to the stock parser. Lookups use a dict of first values,
  and the environ is built in one pass.
- The hot REST routes (the app's `ipe_answer`) reply without the WSGI layers above them, in
  one pass and one `send()`.
- The response's headers and body are two `send()` calls; one is enough for a small body.
- After each response pywsgi tries a read that fails on an idle keep-alive connection; when
  the read buffer is known to be empty the handler waits for the socket instead.
- The `Date` header was formatted for every response; once a second is enough.
- A whole hot REST request already in the read buffer (an SDK's keep-alive publish: request
  line, ordinary headers and a `Content-Length` body) is answered by `answer_buffered`
  straight from the buffer: one regex for the request line, one for the headers, the same
  environ, none of pywsgi's per-request steps (its request parsing, `Input`, response state,
  access-log timing). Anything else takes the stock steps above.
- gevent-websocket formats an access-log line for every request even when its logger
  (silenced by `ipe.app`) drops it, and runs its upgrade checks on requests that ask for none.

And a response body that can `adopt` a socket (pusher-js's `xhr_streaming`, or a poll that
has to wait; see `ipe.http_transport`) gets the connection once its headers are out: this
greenlet, its environ and its read buffer do not wait out a stream that may stay open for
hours. A poll gives the connection back to the server once answered (keep-alive).

Relies on pywsgi's internal hooks (`MessageClass`, `_headers`, `get_environ`,
`_check_http_version`, `finalize_headers`, `_write_with_headers`, `_sendall`, `Input`) and
gevent's socket `_wait` of the gevent version pinned in requirements.txt; without
`http.client._read_headers` it falls back to the stock parser.
"""

from __future__ import annotations

import email.parser
import io
import logging
import re
import time
from collections.abc import Iterator
from http import client
from typing import Any

from gevent.pywsgi import (  # type: ignore[attr-defined]
    MAX_REQUEST_LINE,
    Input,
    OldMessage,
    WSGIHandler,
    format_date_time,
    unquote_latin1,
)
from geventwebsocket.handler import WebSocketHandler

from ipe import handover

_read_headers = getattr(client, "_read_headers", None)

# A header line that email's parser reads as one whole header: a name of printable ASCII other
# than ':' (its headerRE), then a value of printable ASCII and tabs. Anything else (Latin-1,
# control characters, folding) is left to the stock parser rather than reasoned about.
_SIMPLE_HEADER = re.compile(r"([!-9;-~]+):[ \t]*([\t -~]*)\r?\n")

# HTTP versions that pywsgi's check accepts, taken without parsing them.
_COMMON_VERSIONS = frozenset({"HTTP/1.1", "HTTP/1.0"})

# Such a line, whole and CRLF-terminated, in a block of lines: it can only match from the
# start of a line to its end, so a block is all such lines if it has as many matches as lines.
_SIMPLE_LINES = re.compile(r"^([!-9;-~]+):[ \t]*([\t -~]*)\r\n", re.MULTILINE)
# http.client's limits: a longer block might hold a line too long, or too many lines.
_MAX_BLOCK = getattr(client, "_MAXLINE", 65536)
_MAX_LINES = getattr(client, "_MAXHEADERS", 100)

# The request line of a request `answer_buffered` may take: a method of the lean REST routes,
# a path under /apps/ of printable ASCII, HTTP/1.1 (keep-alive by default).
_LANE_LINE = re.compile(rb"(GET|POST) (/apps/[!-~]*) HTTP/1\.1\r\n")

# Bodies up to this size go out in the same send() as the headers (copying is cheaper).
_JOIN_LIMIT = 64 * 1024


class _Headers(OldMessage):  # type: ignore[misc]
    """The message of ordinary header lines: `get` without email's per-value policy pass
    (which returns an ASCII value unchanged anyway), from a dict of the first value of each
    name (pywsgi asks for about ten headers per request, each a scan of every line)."""

    _index: dict[str, str] | None = None
    # How many bytes were left in the read buffer after the block (None: not known).
    buffered_after: int | None = None

    def get(self, name: str, failobj: Any = None) -> Any:
        return self.index().get(name.lower(), failobj)

    def index(self) -> dict[str, str]:
        """Lower-case name -> the first value of that name (`get` without a method call)."""
        index = self._index
        if index is None:  # reversed: the first value of a repeated name is the one kept
            index = self._index = {key.lower(): value for key, value in reversed(self._headers)}
        return index

    # The mutators that change `_headers` (pywsgi deletes Content-Length from a chunked
    # request) drop the index; it is rebuilt on the next `get`.

    def __delitem__(self, name: str) -> None:
        super().__delitem__(name)
        self._index = None

    def __setitem__(self, name: str, value: Any) -> None:
        super().__setitem__(name, value)
        self._index = None

    def add_header(self, *args: Any, **kwargs: Any) -> None:
        """email's add_header; the index is rebuilt."""
        super().add_header(*args, **kwargs)
        self._index = None

    def replace_header(self, name: str, value: Any) -> None:
        """email's replace_header; the index is rebuilt."""
        super().replace_header(name, value)
        self._index = None

    def set_raw(self, name: str, value: Any) -> None:
        """email's set_raw; the index is rebuilt."""
        super().set_raw(name, value)
        self._index = None


_date: tuple[int, bytes] = (0, b"")


def _http_date() -> bytes:
    """The `Date` header's value, formatted once a second rather than once a response."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, format_date_time(now))
    return _date[1]


def _buffered_block(fp: Any) -> tuple[list[tuple[str, str]], int] | None:
    """The (name, value) pairs of the header block if it is already in `fp`'s buffer and
    made of ordinary lines only (then consumed from `fp`), with the number of bytes still
    buffered after it; else None with nothing consumed.

    The usual request arrives whole: one regex over the block replaces reading it line by
    line. CRLF only; a bare LF, a line too long or too many lines take the stock path.
    """
    peek = getattr(fp, "peek", None)
    if peek is None:
        return None
    buffered = peek()
    if buffered[:2] == b"\r\n":
        size = 2
    else:
        end = buffered.find(b"\r\n\r\n")
        if end < 0:
            return None
        size = end + 4
    if size > _MAX_BLOCK:
        return None
    block = buffered[:size].decode("iso-8859-1")
    lines = block.count("\n")
    if lines > _MAX_LINES:
        return None
    headers = _SIMPLE_LINES.findall(block)
    if len(headers) != lines - 1:  # a line that is not an ordinary header (or a bare LF)
        return None
    fp.read(size)
    return headers, len(buffered) - size


def parse_headers(fp: Any) -> Any:
    """`http.client.parse_headers(fp, _class=OldMessage)`, with ordinary lines split here."""
    block = _buffered_block(fp)
    if block is not None:
        message = _Headers()
        message._headers, message.buffered_after = block
        return message
    lines = _read_headers(fp)  # type: ignore[misc]
    headers = []
    for raw in lines:
        if raw in (b"\r\n", b"\n", b""):
            break
        line = raw.decode("iso-8859-1")
        match = _SIMPLE_HEADER.fullmatch(line)
        if match is None:
            return email.parser.Parser(_class=OldMessage).parsestr(
                b"".join(lines).decode("iso-8859-1")
            )
        headers.append(match.groups())
    message = _Headers()
    message._headers = headers  # what the email parser stores: (name, value) pairs
    return message


# Header name -> its environ key ("" for none), for the names clients keep sending.
_ENVIRON_KEYS: dict[str, str] = {}
_ENVIRON_KEYS_MAX = 512  # names are the client's to choose: the cache stops growing here


def _environ_key(name: str) -> str:
    """pywsgi's environ key for a header: HTTP_ and the name in upper case with "_" for "-";
    "" for a name with "_" (dropped: it would clash with CGI variables) and for the two that
    are CONTENT_TYPE and CONTENT_LENGTH."""
    if "_" in name:
        key = ""
    else:
        key = "HTTP_" + name.replace("-", "_").upper()
        if key in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
            key = ""
    if len(_ENVIRON_KEYS) < _ENVIRON_KEYS_MAX:
        _ENVIRON_KEYS[name] = key
    return key


class Handler(WebSocketHandler):  # type: ignore[misc]
    """WebSocketHandler with cheaper header parsing, one send per response and lazy logging."""

    def run_application(self) -> None:
        """Plain HTTP goes straight to the app; only an `Upgrade: websocket` needs the checks
        (and debug-log calls) of gevent-websocket's run_application.

        A plain request is first offered to the app's `ipe_answer` (`ipe.app` sets it; it
        returns None for anything it does not serve): the hot REST routes reply from there,
        without Flask's `__call__`, the WSGI routers or pywsgi's result loop.
        """
        if self.environ.get("HTTP_UPGRADE", "").lower() != "websocket" and not getattr(
            self.server, "pre_start_hook", None
        ):
            answer = getattr(self.application, "ipe_answer", None)
            reply = answer(self.environ) if answer is not None else None
            if reply is not None:
                self._reply(*reply)
                return
            WSGIHandler.run_application(self)
            return
        super().run_application()

    def _check_http_version(self) -> bool:
        # pywsgi parses the version into a tuple through a generator for every request.
        return self.request_version in _COMMON_VERSIONS or super()._check_http_version()

    def start_response(self, status: Any, headers: Any, exc_info: Any = None) -> Any:
        """pywsgi's start_response; gevent-websocket's only adds work for a WebSocket."""
        environ = self.environ
        if environ is not None and environ.get("wsgi.websocket") is None:
            return WSGIHandler.start_response(self, status, headers, exc_info)
        return super().start_response(status, headers, exc_info)

    def process_result(self) -> None:
        """pywsgi's; but a body with `adopt(sock, chunked, give_back)` takes the socket over
        once the headers are written, and the request ends here: the connection is no longer
        pywsgi's, unless the body gives it back (`give_back(sock)`) for the next request."""
        adopt = getattr(self.result, "adopt", None)
        if adopt is None or not self.status or not handover.can_take_response_socket(self):
            super().process_result()
            return
        self.write(b"")  # the headers alone
        chunked = self.response_use_chunked
        give_back = handover.giver(self) if not self.close_connection else None
        adopt(handover.take_response_socket(self), chunked, give_back)

    def MessageClass(self, fp: Any, *args: Any) -> Any:  # noqa: N802 (pywsgi's name)
        """The request's headers (pywsgi's `headers_factory`, faster for ordinary lines)."""
        self._lane_drained = None
        if _read_headers is None:
            return super().MessageClass(fp, *args)
        try:
            return parse_headers(fp)
        except client.LineTooLong:
            message = OldMessage()
            message.status = "Line too long"
            return message

    def _headers(self) -> Iterator[tuple[str, str]]:
        # pywsgi formats every header back into a line and splits it again; same result.
        for name, value in self.headers._headers:
            key = _environ_key(name)
            if key:
                yield key, value.strip()

    keepalive_hint = b""  # the `Keep-Alive` header's value on a kept connection; b"": none

    def _keepalive_header(self) -> bytes:
        """The `Keep-Alive` header's value for this response, or b"" for none."""
        if self.close_connection or self.request_version != "HTTP/1.1" or self.code == 101:
            return b""
        return self.keepalive_hint

    def finalize_headers(self) -> None:
        if self.provided_date is None:
            self.response_headers.append((b"Date", _http_date()))
            self.provided_date = True  # so that pywsgi's adds no second one
        hint = self._keepalive_header()
        if hint:
            self.response_headers.append((b"Keep-Alive", hint))
        super().finalize_headers()

    def _write_with_headers(self, data: bytes) -> None:
        # pywsgi's, but a small body goes out in the same send() as the headers.
        self.headers_sent = True
        self.finalize_headers()
        towrite = bytearray(b"HTTP/1.1 ")
        towrite += self.status
        towrite += b"\r\n"
        for header, value in self.response_headers:
            towrite += header
            towrite += b": "
            towrite += value
            towrite += b"\r\n"
        towrite += b"\r\n"
        if data and not self.response_use_chunked and len(data) <= _JOIN_LIMIT:
            towrite += data
            self._sendall(towrite)
        else:
            self._sendall(towrite)
            self._write(data)

    def _sendall(self, data: bytes) -> None:
        # gevent's sendall() asks the kernel for SO_SNDBUF on every call to size its chunks;
        # a small response is taken whole by one send(), on the plain socket gevent wraps
        # (non-blocking) when there is no TLS: gevent's send() is two Python layers over it.
        sock = self.socket
        try:
            raw = handover.plain_socket(sock)
            if raw is not None:
                try:
                    sent = raw.send(data)
                except BlockingIOError:
                    sent = 0
            else:
                sent = sock.send(data)
            if sent < len(data):
                sock.sendall(memoryview(data)[sent:])
        except OSError as ex:  # what pywsgi's _sendall does with a socket error
            self.status = f"socket error: {ex}"
            if self.code > 0:
                self.code = -self.code
            raise
        self.response_length += len(data)

    def buffer_drained(self) -> bool:
        """True if the last request was exactly what the read buffer held (its header block
        and a body since read whole), so that nothing of the next one can be buffered yet.

        False when not known (another parser, a chunked or unread body, TLS, whose buffer
        this cannot see): then the next read tells.
        """
        if getattr(self.server, "ssl_enabled", True):
            return False
        if self._lane_drained is not None:  # the last request was answered from the buffer
            return self._lane_drained
        after = getattr(self.headers, "buffered_after", None)
        if after is None:
            return False
        length = self.content_length or 0
        body = self.wsgi_input
        return (
            after == length
            and body is not None
            and not body.chunked_input
            and body.position == length
        )

    def response_starting(self, status: str) -> None:
        """Called as a response starts, before its headers are written (a subclass's hook)."""

    def _reply(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        """Write a whole reply of `ipe_answer`: the bytes `start_response` and `write` would
        send for it (status line, its headers, then `Date` and `Keep-Alive`), in one pass.

        Its headers are ipe's own (ASCII, no Connection or Date): none of pywsgi's checks
        apply. Only HTTP/1.1: to an HTTP/1.0 request pywsgi adds a Connection header.
        """
        if self.request_version != "HTTP/1.1":
            self.start_response(status, headers)
            self.write(body)
            return
        self.response_starting(status)
        self._sendall(self.reply_bytes(status, headers, body))

    def reply_bytes(self, status: str, headers: list[tuple[str, str]], body: bytes) -> bytearray:
        """The bytes of a whole HTTP/1.1 reply of `ipe_answer` (see `_reply`)."""
        self.status = status_bytes = status.encode("latin-1")
        self._orig_status = status
        self.code = int(status[:3])
        self.headers_sent = True
        towrite = bytearray(b"HTTP/1.1 ")
        towrite += status_bytes
        towrite += b"\r\n"
        for name, value in headers:
            towrite += f"{name}: {value}\r\n".encode("latin-1")
        towrite += b"Date: "
        towrite += _http_date()
        hint = self._keepalive_header()
        if hint:
            towrite += b"\r\nKeep-Alive: "
            towrite += hint
        towrite += b"\r\n\r\n"
        towrite += body
        return towrite

    def get_environ(self) -> dict[str, Any]:
        """pywsgi's environ, built in one pass over the parsed headers: the same keys and
        values, without a header lookup per key (stock code for a message of another kind)."""
        headers = self.headers
        if type(headers) is not _Headers:
            return super().get_environ()  # type: ignore[no-any-return]
        index = headers.index()
        env = self._request_environ(self.command, self.path, index, headers._headers)
        sock = self.socket if env.get("HTTP_EXPECT") == "100-continue" else None
        chunked = env.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked"
        # pywsgi's _connection_upgrade_requested, as it asks.
        handling_reads = (
            index.get("connection", "").lower() != "upgrade"
            and index.get("upgrade", "").lower() != "websocket"
        )
        self.wsgi_input = Input(self.rfile, self.content_length, socket=sock, chunked_input=chunked)
        env["wsgi.input"] = self.wsgi_input if handling_reads else self.rfile
        env["wsgi.input_terminated"] = handling_reads
        return env

    def _request_environ(
        self, method: str, target: str, index: dict[str, str], pairs: list[tuple[str, str]]
    ) -> dict[str, Any]:
        """pywsgi's environ of a request line and its ordinary header lines (`pairs`, with
        `index` their first values by lower-case name), without `wsgi.input`."""
        env: dict[str, Any] = self.server.get_environ()
        env["REQUEST_METHOD"] = method
        env["SCRIPT_NAME"] = ""
        path, _, query = target.partition("?")
        env["PATH_INFO"] = unquote_latin1(path) if "%" in path else path
        env["QUERY_STRING"] = query
        content_type = index.get("content-type")
        if content_type is not None:
            env["CONTENT_TYPE"] = content_type
        length = index.get("content-length")
        if length:
            env["CONTENT_LENGTH"] = length
        env["SERVER_PROTOCOL"] = self.request_version
        client_address = self.client_address
        if isinstance(client_address, tuple):
            env["REMOTE_ADDR"] = str(client_address[0])
            env["REMOTE_PORT"] = str(client_address[1])
        for name, value in pairs:  # what _headers() yields, without a generator
            key = _ENVIRON_KEYS.get(name)
            if key is None:
                key = _environ_key(name)
            if not key:
                continue
            value = value.strip()
            if key in env:
                env[key] += ("; " if "COOKIE" in key else ",") + value
            else:
                env[key] = value
        return env

    def answer_buffered(self) -> bool | None:
        """Answer the next request from the read buffer if it is a whole hot REST request
        that the app's `ipe_answer` serves: True if answered and the connection stays open,
        False if answered and it is to close; None if not taken (nothing consumed: the
        stock steps read it). May wait for the first bytes of a request.

        Taken only where the stock steps would do exactly this: HTTP/1.1 with ordinary
        header lines, keep-alive, a body of known length already buffered, no upgrade, no
        access log, no pre-start hook.
        """
        rfile = self.rfile
        if rfile.closed or not self.lane_open():
            return None
        buffered = rfile.peek()
        found = self.lane_answer(buffered)
        if found is None:
            return None
        size, reply = found
        rfile.read(size)
        self._lane_drained = len(buffered) == size
        self.response_length = 0
        try:
            self._reply(*reply)
        except OSError:
            return False  # the client went away; nothing is left to answer
        return True

    def lane_open(self) -> bool:
        """Whether requests of this connection may be answered from their bytes (the app has
        `ipe_answer`, no pre-start hook, no access log)."""
        answer = self._lane
        if answer is None:  # the connection's first request: look once
            server = self.server
            found = getattr(server.application, "ipe_answer", None)
            hook = getattr(server, "pre_start_hook", None)
            answer = self._lane = found if found is not None and not hook else False
        return answer is not False and not self.logger.isEnabledFor(logging.INFO)

    def lane_answer(self, buffered: bytes) -> tuple[int, Any] | None:
        """(its size, the app's reply) if `buffered` starts with a whole hot REST request that
        the app's `ipe_answer` answers (see `answer_buffered`); None if not (then nothing was
        done). `lane_open` must be true."""
        line = _LANE_LINE.match(buffered)
        if line is None:
            return None
        start = line.end()
        if start > MAX_REQUEST_LINE:
            return None  # the stock steps answer 414
        if buffered[start : start + 2] == b"\r\n":
            end = start  # no header lines
        else:
            end = buffered.find(b"\r\n\r\n", start)
            if end < 0:
                return None
            end += 2
        if end > _MAX_BLOCK:
            return None
        block = buffered[start:end].decode("iso-8859-1")
        pairs = _SIMPLE_LINES.findall(block)
        if len(pairs) != block.count("\n") or len(pairs) > _MAX_LINES:
            return None
        index = {name.lower(): value for name, value in reversed(pairs)}
        length = index.get("content-length", "0")
        connection = index.get("connection")
        if (
            not (length.isascii() and length.isdigit())
            or (connection is not None and connection.lower() != "keep-alive")
            # A body of unknown length or one to ask for, or an upgrade: pywsgi's rules.
            or "transfer-encoding" in index
            or "expect" in index
            or "upgrade" in index
        ):
            return None
        size = end + 2 + int(length)
        if len(buffered) < size:
            return None  # the body is still on its way: the stock steps wait for it
        method = line.group(1).decode()
        self.command = method
        self.path = target = line.group(2).decode()
        self.request_version = "HTTP/1.1"
        self.close_connection = False
        env = self._request_environ(method, target, index, pairs)
        env["wsgi.input"] = io.BytesIO(buffered[end + 2 : size])
        env["wsgi.input_terminated"] = True
        self.environ = env
        reply = self._lane(env)
        if reply is None:
            return None
        self._requests += 1
        return size, reply

    _requests = 0  # requests read on this connection
    # The app's `ipe_answer` for `answer_buffered`; False: none (or a pre-start hook); None:
    # not looked up yet.
    _lane: Any = None
    # After a request answered from the buffer: whether it was all the buffer held (None
    # after one that took the stock steps: `buffer_drained` asks the parsed headers).
    _lane_drained: bool | None = None

    def log_request(self) -> None:
        """gevent-websocket's access log line, formatted only if its logger would write it."""
        if self.logger.isEnabledFor(logging.INFO):
            super().log_request()
