"""ipe.http_handler's header parser reads every header block as the stock one does."""

from __future__ import annotations

import io
from http import client

import pytest
from gevent.pywsgi import OldMessage

from ipe.http_handler import parse_headers

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
]


@pytest.mark.parametrize("block", BLOCKS)
def test_same_headers_as_the_stock_parser(block: bytes) -> None:
    ours_fp, stock_fp = io.BytesIO(block), io.BytesIO(block)
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


def test_too_long_line_is_refused_as_before() -> None:
    block = b"X: " + b"a" * 70000 + b"\r\n\r\n"
    with pytest.raises(client.LineTooLong):
        parse_headers(io.BytesIO(block))
