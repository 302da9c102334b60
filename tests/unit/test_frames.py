"""ipe.frames: server frames built once, client frame headers read and judged (RFC 6455)."""

from __future__ import annotations

import os
import struct

import pytest

from ipe import protocol
from ipe.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    close_frame,
    frame,
    header_error,
    parse_header,
    peer_close_code,
    text_frame,
    unmask,
)

LIMIT = 10_000


def client_frame(payload: bytes, opcode: int = OP_TEXT, fin: bool = True, mask: bytes = b"abcd"):
    """A masked client frame, as a browser sends it."""
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_server_frames_carry_the_length_in_the_shortest_form(size):
    payload = b"x" * size
    built = text_frame(payload)
    assert built[0] == 0x81  # FIN + text
    if size < 126:
        assert built[1] == size and built[2:] == payload
    elif size < 65536:
        assert built[1] == 126 and struct.unpack("!H", built[2:4])[0] == size
        assert built[4:] == payload
    else:
        assert built[1] == 127 and struct.unpack("!Q", built[2:10])[0] == size
        assert built[10:] == payload


def test_close_frame_holds_code_and_a_reason_cut_to_125_bytes():
    built = close_frame(4001, "x" * 500)
    assert built[0] == 0x80 | OP_CLOSE
    assert built[1] == 125
    assert struct.unpack("!H", built[2:4])[0] == 4001
    assert frame(b"", OP_PONG) == bytes((0x8A, 0))


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 65536])
def test_a_client_frame_parses_and_unmasks_to_its_payload(size):
    payload = os.urandom(size)
    data = client_frame(payload)
    b0, opcode, masked, length, head = parse_header(data, 0, len(data))
    assert (opcode, length, bool(masked), b0 & 0x80) == (OP_TEXT, size, True, 0x80)
    assert unmask(data[head : head + length], data[head - 4 : head]) == payload


def test_a_header_that_has_not_fully_arrived_parses_to_none():
    data = client_frame(b"y" * 70000)
    for cut in range(0, 14):  # 2 + 8 length bytes + 4 mask bytes
        assert parse_header(data, 0, cut) is None
    assert parse_header(data, 0, 14) is not None


def test_parse_header_reads_at_an_offset():
    first, second = client_frame(b"one"), client_frame(b"second", OP_BINARY)
    data = first + second
    header = parse_header(data, len(first), len(data))
    assert header is not None and header[1] == OP_BINARY and header[3] == 6


def judge(data: bytes, started: int | None = None, size: int = 0) -> tuple[int, str] | None:
    b0, opcode, masked, length, _ = parse_header(data, 0, len(data))
    return header_error(b0, masked, opcode, length, started, size, LIMIT)


def test_acceptable_frames_earn_no_error():
    assert judge(client_frame(b"hi")) is None
    assert judge(client_frame(b"hi", fin=False)) is None
    assert judge(client_frame(b"rest", OP_CONTINUATION), started=OP_TEXT, size=2) is None
    assert judge(client_frame(b"", OP_PING)) is None
    assert judge(client_frame(b"", OP_PING), started=OP_TEXT) is None  # between fragments


@pytest.mark.parametrize(
    ("data", "started", "code", "reason"),
    [
        (bytes((0xC1, 0x80)) + b"mask", None, 1002, "Reserved bits set"),
        (bytes((0x81, 0x02)) + b"hi", None, 1002, "Client frames must be masked"),
        (client_frame(b"", 0xB), None, 1002, "Unknown opcode 11"),
        (client_frame(b"", 0x3), None, 1002, "Unknown opcode 3"),
        (client_frame(b"x" * 126, OP_PING), None, 1002, "Invalid control frame"),
        (client_frame(b"", OP_PING, fin=False), None, 1002, "Invalid control frame"),
        (client_frame(b"x", OP_CONTINUATION), None, 1002, "Unexpected continuation frame"),
        (client_frame(b"x"), OP_TEXT, 1002, "Expected a continuation frame"),
        (client_frame(b"x" * (LIMIT + 1)), None, 1009, "Message too big"),
    ],
)
def test_bad_frames_earn_their_close_code(data, started, code, reason):
    assert judge(data, started) == (code, reason)


def test_fragments_count_towards_the_limit():
    assert judge(client_frame(b"x" * 10, OP_CONTINUATION), OP_TEXT, LIMIT - 9) == (
        protocol.WS_MESSAGE_TOO_BIG,
        "Message too big",
    )


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"", 1000),
        (b"\x03", 1000),  # one byte: no code
        (struct.pack("!H", 1000), 1000),
        (struct.pack("!H", 4001) + b"bye", 4001),
        (struct.pack("!H", 999), 1002),
        (struct.pack("!H", 1005), 1002),
        (struct.pack("!H", 1015), 1002),
        (struct.pack("!H", 2999), 1002),
        (struct.pack("!H", 3000), 3000),
        (struct.pack("!H", 5000), 1002),
    ],
)
def test_the_code_echoed_to_a_client_close(payload, code):
    assert peer_close_code(payload) == code
