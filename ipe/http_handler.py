"""gevent-websocket's request handler, with the per-request costs of keep-alive HTTP cut.

A backend publishing over a persistent connection pays pywsgi's handler on every request. These
of its costs are not needed:

- Headers are parsed by the `email` package (a feed parser built per request). Ordinary header
  lines (`Name: value`, one per line) are split here into the same message object; anything
  else (folded lines, a line that is not a header) goes to the stock parser.
- The response's headers and body are two `send()` calls; one is enough for a small body.
- The `Date` header was formatted for every response; once a second is enough.
- gevent-websocket formats an access-log line for every request even when its logger
  (silenced by `ipe.app`) drops it, and runs its upgrade checks on requests that ask for none.

And a response body that can `adopt` a socket (pusher-js's `xhr_streaming`, or a poll that
has to wait; see `ipe.http_transport`) gets the connection once its headers are out: this
greenlet, its environ and its read buffer do not wait out a stream that may stay open for
hours. A poll gives the connection back to the server once answered (keep-alive).

Relies on pywsgi's internal hooks (`MessageClass`, `_headers`, `finalize_headers`,
`_write_with_headers`, `_sendall`) of the gevent version pinned in requirements.txt; without
`http.client._read_headers` it falls back to the stock parser.
"""

from __future__ import annotations

import email.parser
import logging
import re
import time
from collections.abc import Iterator
from http import client
from typing import Any

from gevent.pywsgi import OldMessage, WSGIHandler, format_date_time  # type: ignore[attr-defined]
from geventwebsocket.handler import WebSocketHandler

from ipe import handover

_read_headers = getattr(client, "_read_headers", None)

# A header line that email's parser reads as one whole header: a name of printable ASCII other
# than ':' (its headerRE), then a value of printable ASCII and tabs. Anything else (Latin-1,
# control characters, folding) is left to the stock parser rather than reasoned about.
_SIMPLE_HEADER = re.compile(r"([!-9;-~]+):[ \t]*([\t -~]*)\r?\n")

# Bodies up to this size go out in the same send() as the headers (copying is cheaper).
_JOIN_LIMIT = 64 * 1024


class _Headers(OldMessage):  # type: ignore[misc]
    """The message of ordinary header lines: `get` without email's per-value policy pass
    (which returns an ASCII value unchanged anyway)."""

    def get(self, name: str, failobj: Any = None) -> Any:
        name = name.lower()
        for key, value in self._headers:
            if key.lower() == name:
                return value
        return failobj


_date: tuple[int, bytes] = (0, b"")


def _http_date() -> bytes:
    """The `Date` header's value, formatted once a second rather than once a response."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, format_date_time(now))
    return _date[1]


def parse_headers(fp: Any) -> Any:
    """`http.client.parse_headers(fp, _class=OldMessage)`, with ordinary lines split here."""
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


class Handler(WebSocketHandler):  # type: ignore[misc]
    """WebSocketHandler with cheaper header parsing, one send per response and lazy logging."""

    def run_application(self) -> None:
        """Plain HTTP goes straight to the app; only an `Upgrade: websocket` needs the checks
        (and debug-log calls) of gevent-websocket's run_application."""
        if self.environ.get("HTTP_UPGRADE", "").lower() != "websocket" and not getattr(
            self.server, "pre_start_hook", None
        ):
            WSGIHandler.run_application(self)
            return
        super().run_application()

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
            if "_" in name:
                continue  # pywsgi drops these (they would clash with CGI variables)
            key = name.replace("-", "_").upper()
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                yield "HTTP_" + key, value.strip()

    def finalize_headers(self) -> None:
        if self.provided_date is None:
            self.response_headers.append((b"Date", _http_date()))
            self.provided_date = True  # so that pywsgi's adds no second one
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
        # a small response is taken whole by one send().
        try:
            sent = self.socket.send(data)
            if sent < len(data):
                self.socket.sendall(memoryview(data)[sent:])
        except OSError as ex:  # what pywsgi's _sendall does with a socket error
            self.status = f"socket error: {ex}"
            if self.code > 0:
                self.code = -self.code
            raise
        self.response_length += len(data)

    def log_request(self) -> None:
        """gevent-websocket's access log line, formatted only if its logger would write it."""
        if self.logger.isEnabledFor(logging.INFO):
            super().log_request()
