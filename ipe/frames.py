"""RFC 6455 framing, pure: building server frames and reading client frame headers.

No I/O and no state: `ipe.connection` owns the socket and the reassembly of messages and
calls these. Server frames are unmasked, so one frame's bytes can go to every subscriber.
"""

from __future__ import annotations

import struct

from ipe.protocol import WS_MESSAGE_TOO_BIG, WS_NORMAL, WS_PROTOCOL_ERROR

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
FIN = 0x80

_unpack_h = struct.Struct("!H").unpack
_unpack_h_from = struct.Struct("!H").unpack_from
_unpack_q_from = struct.Struct("!Q").unpack_from
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


def unmask(payload: bytes, mask: bytes) -> bytes:
    """The payload of a client frame XORed with its 4-byte masking key."""
    n = len(payload)
    if not n:
        return payload
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def parse_header(buf: bytes, pos: int, end: int) -> tuple[int, int, int, int, int] | None:
    """(first byte, opcode, masked, payload length, header length incl. the mask) of the
    frame at `buf[pos:end]`, or None while its header has not fully arrived."""
    if end - pos < 2:
        return None
    b0 = buf[pos]
    b1 = buf[pos + 1]
    length = b1 & 0x7F
    head = 2
    if length == 126:
        if end - pos < 4:
            return None
        (length,) = _unpack_h_from(buf, pos + 2)
        head = 4
    elif length == 127:
        if end - pos < 10:
            return None
        (length,) = _unpack_q_from(buf, pos + 2)
        head = 10
    masked = b1 & 0x80
    if masked:
        head += 4
    if end - pos < head:
        return None
    return b0, b0 & 0x0F, masked, length, head


def header_error(
    b0: int, masked: int, opcode: int, length: int, started: int | None, size: int, limit: int
) -> tuple[int, str] | None:
    """The close code and reason a client frame header earns, or None when it is acceptable.

    `started` is the opcode of the fragmented message in progress (None: none), `size` the
    bytes it holds so far, `limit` the largest message accepted.
    """
    if b0 & 0x70:
        return WS_PROTOCOL_ERROR, "Reserved bits set"
    if not masked:
        return WS_PROTOCOL_ERROR, "Client frames must be masked"
    if opcode >= OP_CLOSE:
        if opcode > OP_PONG:
            return WS_PROTOCOL_ERROR, f"Unknown opcode {opcode}"
        if length > 125 or not b0 & FIN:
            return WS_PROTOCOL_ERROR, "Invalid control frame"
        return None
    if opcode > OP_BINARY:
        return WS_PROTOCOL_ERROR, f"Unknown opcode {opcode}"
    if opcode == OP_CONTINUATION and started is None:
        return WS_PROTOCOL_ERROR, "Unexpected continuation frame"
    if opcode != OP_CONTINUATION and started is not None:
        return WS_PROTOCOL_ERROR, "Expected a continuation frame"
    if size + length > limit:
        return WS_MESSAGE_TOO_BIG, "Message too big"
    return None


def peer_close_code(payload: bytes) -> int:
    """The code to echo to a client's close frame: its own, or 1002 when it may not be sent
    (RFC 6455 §7.4: reserved, or outside the ranges a peer may use)."""
    code = _unpack_h(payload[:2])[0] if len(payload) >= 2 else WS_NORMAL
    if code < 1000 or 1004 <= code <= 1006 or 1015 <= code < 3000 or code >= 5000:
        return WS_PROTOCOL_ERROR
    return code
