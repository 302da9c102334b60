"""ipe.http_handler reads every header block, and builds every environ, as pywsgi does."""

from __future__ import annotations

import io
import logging
from http import client
from types import SimpleNamespace
from typing import Any

import pytest
from gevent.pywsgi import Input, OldMessage, WSGIHandler

from ipe.http_handler import Handler, _buffered_block, parse_headers

BLOCKS = [
    b"\r\n",
    b"Host: 127.0.0.1:8080\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n",
    b"Host:x\nAccept:   */*  \n\n",  # bare LF, no space, trailing spaces kept
    b"X-Empty:\r\nX-Tab:\tv\r\n\r\n",
    b"A: 1\r\nA: 2\r\nB: \xe9t\xe9\r\n\r\n",  # repeated names; Latin-1 value (stock parser)
    b"Folded: one\r\n two\r\nNext: 3\r\n\r\n",  # continuation line (stock parser)
    b": no name\r\nHost: h\r\n\r\n",  # missing name (stock parser skips it)
    b"Not a header\r\nHost: h\r\n\r\n",  # ends the headers for the stock parser
    b"From nobody\r\nHost: h\r\n\r\n",
    b"Sp ace: v\r\n\r\n",
    b"V: a\x0bb\r\nW: c\x85d\r\n\r\n",  # control characters
    b"Host: h\r\n",  # connection closed before the blank line
    b"X_Under: 1\r\nHost: h\r\n\r\nbody",
    b"\r\nA: 1\r\n\r\n",  # no headers; what follows is the body
    b"A: 1\nB: 2\r\n\r\n",  # a bare LF among CRLFs
    b"A: 1\n\nB: 2\r\n\r\n",  # ended by a bare-LF blank line
    b"A: 1\rX: 2\r\n\r\n",  # a lone CR
    b"A: 1\r\nSp ace: v\r\n\r\n",  # a suffix of the bad line would look like a header
    b"Host: h\r\n\r\nX: 1\r\n\r\n",  # a body that looks like headers
    b"".join(b"H%d: v\r\n" % i for i in range(99)) + b"\r\n",  # as many as allowed
]


def _files(block: bytes) -> list[io.IOBase]:
    """The block as a file without `peek` (read line by line) and as a buffered socket file
    (the header block taken from the buffer at once)."""
    return [io.BytesIO(block), io.BufferedReader(io.BytesIO(block))]  # type: ignore[list-item]


@pytest.mark.parametrize("buffered", [False, True])
@pytest.mark.parametrize("block", BLOCKS)
def test_same_headers_as_the_stock_parser(block: bytes, buffered: bool) -> None:
    ours_fp, stock_fp = _files(block)[buffered], io.BytesIO(block)
    ours = parse_headers(ours_fp)
    stock = client.parse_headers(stock_fp, _class=OldMessage)
    assert ours._headers == stock._headers
    assert list(ours.headers) == list(stock.headers)
    assert ours.status == stock.status == ""
    for name in ("host", "HOST", "content-length", "missing", "a", "x-empty"):
        assert ours.get(name) == stock.get(name)
        assert ours.get(name, "default") == stock.get(name, "default")
    assert ours.typeheader == stock.typeheader
    assert ours_fp.tell() == stock_fp.tell()  # the body starts where it did


@pytest.mark.parametrize("buffered", [False, True])
def test_too_long_line_is_refused_as_before(buffered: bool) -> None:
    block = b"X: " + b"a" * 70000 + b"\r\n\r\n"
    with pytest.raises(client.LineTooLong):
        parse_headers(_files(block)[buffered])


@pytest.mark.parametrize("buffered", [False, True])
def test_too_many_headers_are_refused_as_before(buffered: bool) -> None:
    block = b"".join(b"H%d: v\r\n" % i for i in range(100)) + b"\r\n"
    with pytest.raises(client.HTTPException, match="more than 100 headers"):
        client.parse_headers(io.BytesIO(block))
    with pytest.raises(client.HTTPException, match="more than 100 headers"):
        parse_headers(_files(block)[buffered])


def test_index_follows_changes_to_the_headers() -> None:
    block = b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
    headers = parse_headers(io.BufferedReader(io.BytesIO(block)))
    assert headers.get("content-length") == "5"
    del headers["content-length"]  # what pywsgi does for a chunked request
    assert headers.get("content-length") is None
    headers["Content-Length"] = "7"
    assert headers.get("content-length") == "7"


def test_an_ordinary_block_is_taken_from_the_buffer_at_once() -> None:
    fp = io.BufferedReader(io.BytesIO(BLOCKS[1] + b"body"))
    assert _buffered_block(fp) == (
        [
            ("Host", "127.0.0.1:8080"),
            ("Content-Type", "application/json"),
            ("Content-Length", "12"),
        ],
        4,
    )  # and "body" still buffered after it
    assert fp.read() == b"body"


class _Server:
    """What a handler asks its server for while building the environ."""

    def get_environ(self) -> dict[str, Any]:
        return {"SERVER_NAME": "localhost", "wsgi.url_scheme": "http", "SERVER_PORT": "80"}


REQUESTS = [
    (b"POST /apps/1/events?auth_key=k&x=%20 HTTP/1.1", BLOCKS[1] + b"{}"),
    (b"GET /apps/1/channels/a%2Fb%C3%A9 HTTP/1.1", b"Cookie: a=1\r\nCookie: b=2\r\n\r\n"),
    (b"GET / HTTP/1.0", b"Accept: a\r\nAccept: b\r\nX_Under: 1\r\nContent-Type:\r\n\r\n"),
    (b"POST /x HTTP/1.1", b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n"),
    (b"POST /x HTTP/1.1", b"Expect: 100-continue\r\nContent-Length: 0\r\n\r\n"),
    (b"GET /app/k HTTP/1.1", b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
    (b"GET /app/k HTTP/1.1", b"Connection:  upgrade \r\nX: \xe9\r\n\r\n"),
    (b"GET /a?b?c HTTP/1.1", b"\r\n"),
]


def _environ(handler_class: type, line: bytes, rest: bytes) -> dict[str, Any]:
    handler = handler_class.__new__(handler_class)
    handler.server = _Server()
    handler.socket = "the socket"
    handler.client_address = ("127.0.0.1", 5555)
    handler.rfile = io.BufferedReader(io.BytesIO(rest))
    handler.read_request(line.decode("latin-1"))
    environ = handler.get_environ()
    assert isinstance(environ.pop("wsgi.input"), (Input, io.BufferedReader))
    input_ = handler.wsgi_input
    environ["input"] = (input_.content_length, input_.socket, input_.chunked_input)
    return environ


@pytest.mark.parametrize(("line", "rest"), REQUESTS)
def test_same_environ_as_pywsgi(line: bytes, rest: bytes) -> None:
    assert _environ(Handler, line, rest) == _environ(WSGIHandler, line, rest)


class _LaneServer(_Server):
    """A server whose app's `ipe_answer` records the environ it is given and declines."""

    logger = logging.getLogger("test.http_handler.lane")  # WARNING: no access log
    pre_start_hook = None

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.application = SimpleNamespace(ipe_answer=self._answer)

    def _answer(self, environ: dict[str, Any]) -> None:
        self.seen.append(dict(environ))
        return None


# Requests taken from the buffer (their environ must be pywsgi's), and requests that must
# take the stock steps without the app being asked first.
LANE_TAKEN = [
    (b"POST /apps/1/events?auth_key=k&x=%20 HTTP/1.1", BLOCKS[1] + b'{"a": "bcd"}'),
    (b"GET /apps/1/channels/a%2Fb%C3%A9 HTTP/1.1", b"Cookie: a=1\r\nCookie: b=2\r\n\r\n"),
    (b"GET /apps/1/channels HTTP/1.1", b"\r\n"),
    (b"POST /apps/1/events HTTP/1.1", b"Connection: Keep-Alive\r\nContent-Length: 2\r\n\r\n{}"),
]
LANE_REFUSED = [
    (b"GET / HTTP/1.1", b"Host: h\r\n\r\n"),  # not under /apps/
    (b"POST /apps/1/events HTTP/1.0", b"Content-Length: 2\r\n\r\n{}"),
    (b"POST /apps/1/events HTTP/1.1", b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    (b"POST /apps/1/events HTTP/1.1", b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n{}"),
    (b"POST /apps/1/events HTTP/1.1", b"Connection: close\r\nContent-Length: 2\r\n\r\n{}"),
    (b"POST /apps/1/events HTTP/1.1", b"Content-Length: 9\r\n\r\n{}"),  # body not all here
    (b"POST /apps/1/events HTTP/1.1", b"Content-Length: x\r\n\r\n{}"),
    (b"POST /apps/1/events HTTP/1.1", b"Folded: a\r\n b\r\nContent-Length: 2\r\n\r\n{}"),
    (b"POST /apps/1/events HTTP/1.1", b"Content-Length: 2\r\n"),  # headers not ended
    (b"PUT /apps/1/events HTTP/1.1", b"Content-Length: 2\r\n\r\n{}"),
    (b"GET /apps/1/channels HTTP/1.1", b"Upgrade: websocket\r\n\r\n"),
]


def _lane_handler(line: bytes, rest: bytes) -> tuple[Handler, _LaneServer]:
    handler = Handler.__new__(Handler)
    handler.server = server = _LaneServer()
    handler.socket = "the socket"
    handler.client_address = ("127.0.0.1", 5555)
    handler.rfile = io.BufferedReader(io.BytesIO(line + b"\r\n" + rest))
    return handler, server


@pytest.mark.parametrize(("line", "rest"), LANE_TAKEN)
def test_a_buffered_request_gets_pywsgi_s_environ(line: bytes, rest: bytes) -> None:
    handler, server = _lane_handler(line, rest)
    assert handler.answer_buffered() is None  # declined by the app: left to the stock steps
    assert handler.rfile.read() == line + b"\r\n" + rest  # nothing consumed
    (environ,) = server.seen
    body = environ.pop("wsgi.input").read()
    stock = _environ(WSGIHandler, line, rest)
    del stock["input"]
    assert environ == stock
    assert body == rest.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize(("line", "rest"), LANE_REFUSED)
def test_other_requests_take_the_stock_steps(line: bytes, rest: bytes) -> None:
    handler, server = _lane_handler(line, rest)
    assert handler.answer_buffered() is None
    assert server.seen == []  # the app was not asked
    assert handler.rfile.read() == line + b"\r\n" + rest
