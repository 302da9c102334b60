"""The Pusher Channels wire format: names, codes, channel rules and JSON encoding. Pure."""

from __future__ import annotations

import json
import math
import re
import secrets
from typing import Any

PROTOCOL_VERSION = 7
SUPPORTED_PROTOCOLS = range(4, 8)

# Close / pusher:error codes (protocol-notes.md §1.6). 4000-4099: the client must not reconnect;
# 4100-4199: reconnect after a back-off; 4200-4299: reconnect at once; 4300+: not a close code.
SSL_ONLY = 4000
APP_NOT_FOUND = 4001
APP_DISABLED = 4003
OVER_QUOTA = 4004
PATH_NOT_FOUND = 4005
INVALID_VERSION = 4006
UNSUPPORTED_PROTOCOL = 4007
NO_PROTOCOL = 4008
UNAUTHORIZED = 4009
OVER_CAPACITY = 4100
GENERIC_RECONNECT = 4200
PONG_NOT_RECEIVED = 4201
CLIENT_EVENT_REJECTED = 4301
WATCHLIST_LIMIT = 4302

# `pusher:subscription_error`: its types and statuses, in the shapes soketi sends and Laravel
# Echo's `.error()` receives (the 4xxx statuses reuse the Pusher code of the same meaning).
SUB_AUTH_ERROR = "AuthError"
SUB_LIMIT_REACHED = "LimitReached"
SUB_INVALID_CHANNEL = "InvalidChannel"
SUB_INVALID = 400
SUB_UNAUTHORIZED = 401
SUB_TOO_LONG = UNAUTHORIZED  # a channel name or user id over its limit
SUB_PRESENCE_FULL = OVER_CAPACITY
SUB_USER_INFO_TOO_BIG = CLIENT_EVENT_REJECTED
SUB_TOO_MANY = CLIENT_EVENT_REJECTED  # max_subscriptions_per_connection

# Plain WebSocket close codes (RFC 6455 §7.4.1).
WS_NORMAL = 1000
WS_GOING_AWAY = 1001
WS_PROTOCOL_ERROR = 1002
WS_UNSUPPORTED_DATA = 1003
WS_INVALID_PAYLOAD = 1007
WS_MESSAGE_TOO_BIG = 1009

CONNECTION_ESTABLISHED = "pusher:connection_established"
ERROR = "pusher:error"
PING = "pusher:ping"
PONG = "pusher:pong"
SUBSCRIBE = "pusher:subscribe"
UNSUBSCRIBE = "pusher:unsubscribe"
SIGNIN = "pusher:signin"
SIGNIN_SUCCESS = "pusher:signin_success"
SUBSCRIPTION_ERROR = "pusher:subscription_error"
CACHE_MISS = "pusher:cache_miss"
SUBSCRIPTION_SUCCEEDED = "pusher_internal:subscription_succeeded"
MEMBER_ADDED = "pusher_internal:member_added"
MEMBER_REMOVED = "pusher_internal:member_removed"
WATCHLIST_EVENTS = "pusher_internal:watchlist_events"
SUBSCRIPTION_COUNT = "pusher_internal:subscription_count"

CLIENT_EVENT_PREFIX = "client-"
SERVER_TO_USER_PREFIX = "#server-to-user-"

CHANNEL_NAME_RE = re.compile(r"[A-Za-z0-9_\-=@,.;]+")
# [0-9], not \d: \d also matches other scripts' digits (e.g. "١٢.٣"), which no client sends.
SOCKET_ID_RE = re.compile(r"[0-9]+\.[0-9]+")

_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_string = json.encoder.encode_basestring  # a str as a JSON string literal (the C version)


class PusherError(Exception):
    """A protocol-level error carried as data: a Pusher code (or None) and a message."""

    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def dumps(value: Any) -> str:
    """Compact JSON, as every Pusher client and SDK writes it."""
    return _compact(value)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: Python reads it as inf and would write Infinity
        raise ValueError(f"number out of range: {text[:32]}")
    return value


# One decoder for every message (json.loads with options builds a new one per call).
_decode = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float).decode
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def loads(text: str, surrogates: bool = False) -> Any:
    """Strict JSON, ValueError for anything else: NaN and Infinity, numbers beyond a double,
    nesting deeper than Python's recursion limit, and (unless `surrogates`, for a caller that
    checks each string itself) lone surrogates, which UTF-8 cannot carry to anyone."""
    try:
        value = _decode(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not surrogates and "\\u" in text and _SURROGATE_ESCAPE.search(text):
        try:
            _compact(value).encode()
        except UnicodeEncodeError:
            raise ValueError("JSON string with a lone surrogate") from None
    return value


# --- channels ---------------------------------------------------------------------------------


def is_private(channel: str) -> bool:
    """True for every channel that needs a private signature (private-, incl. encrypted/cache)."""
    return channel.startswith("private-")


def is_presence(channel: str) -> bool:
    """True for presence- and presence-cache- channels."""
    return channel.startswith("presence-")


def is_encrypted(channel: str) -> bool:
    """True for end-to-end encrypted channels, whose payloads the server never reads."""
    return channel.startswith("private-encrypted-")


def is_cache(channel: str) -> bool:
    """True for the four cache-channel kinds, whose last event is replayed to new subscribers."""
    return (
        channel.startswith("cache-")
        or channel.startswith("private-cache-")
        or channel.startswith("private-encrypted-cache-")
        or channel.startswith("presence-cache-")
    )


def server_to_user_id(channel: str) -> str | None:
    """The user id of a `#server-to-user-{id}` channel, or None for any other channel."""
    if channel.startswith(SERVER_TO_USER_PREFIX):
        return channel[len(SERVER_TO_USER_PREFIX) :]
    return None


def allows_client_events(channel: str) -> bool:
    """Client events are allowed on private and presence channels, never on encrypted ones."""
    return (is_private(channel) and not is_encrypted(channel)) or is_presence(channel)


def valid_channel_name(channel: object, max_length: int) -> bool:
    """Pusher's channel-name rule (docs/protocol-notes.md §2.1), `#server-to-user-{id}` included."""
    if not isinstance(channel, str) or not 0 < len(channel) <= max_length:
        return False
    user_id = server_to_user_id(channel)
    if user_id is not None:
        return CHANNEL_NAME_RE.fullmatch(user_id) is not None
    return CHANNEL_NAME_RE.fullmatch(channel) is not None


def valid_socket_id(socket_id: object) -> bool:
    """A socket id is two runs of digits joined by a dot."""
    return isinstance(socket_id, str) and SOCKET_ID_RE.fullmatch(socket_id) is not None


def new_socket_id() -> str:
    """A fresh, practically unique socket id in Pusher's `\\d+.\\d+` shape."""
    # secrets, not random: socket ids are not secret, but a predictable one would let a
    # client guess another's and exclude it from events (REST socket_id) or impersonate it.
    return f"{secrets.randbelow((1 << 31) - 1) + 1}.{secrets.randbelow((1 << 31) - 1) + 1}"


# --- encoding -------------------------------------------------------------------------------


def encode_event(
    event: str, channel: str | None = None, data: Any = None, user_id: str | None = None
) -> bytes:
    """One server-to-client message as UTF-8 JSON; `data` is sent as given (string or object)."""
    message: dict[str, Any] = {"event": event}
    if channel is not None:
        message["channel"] = channel
    message["data"] = {} if data is None else data
    if user_id is not None:
        message["user_id"] = user_id
    return _compact(message).encode()


def encode_client_event(event: str, channel: str, data_json: str, user_id: str | None) -> bytes:
    """A forwarded client event; `data_json` is the data already serialized to JSON."""
    tail = "}" if user_id is None else f',"user_id":{_string(user_id)}}}'
    head = f'{{"event":{_string(event)},"channel":{_string(channel)},"data":'
    return f"{head}{data_json}{tail}".encode()


def encode_events(event: str, channels: list[str], data: str) -> list[bytes]:
    """`encode_event(event, channel, data)` for each channel, escaping name and data only once.

    A REST publish to 100 channels would otherwise re-escape up to 10 KB of data 100 times.
    """
    # All three are strings: _string is what _compact does with one, without the call.
    head = b'{"event":' + _string(event).encode() + b',"channel":'
    tail = b',"data":' + _string(data).encode() + b"}"
    return [head + _string(channel).encode() + tail for channel in channels]


def encode_error(code: int | None, message: str, channel: str | None = None) -> bytes:
    """A `pusher:error` frame payload; `code` is a number or null, as Java clients require."""
    return encode_event(ERROR, channel, {"code": code, "message": message})


def connection_established(socket_id: str, activity_timeout: int) -> bytes:
    """The first frame of every connection; its data is a JSON *string* (Java needs that)."""
    data = _compact({"socket_id": socket_id, "activity_timeout": activity_timeout})
    return encode_event(CONNECTION_ESTABLISHED, data=data)


def subscription_error(channel: str, kind: str, error: str, status: int) -> bytes:
    """Channel-scoped subscription failure in the shape Laravel Echo's `.error()` receives."""
    return encode_event(
        SUBSCRIPTION_ERROR, channel, {"type": kind, "error": error, "status": status}
    )


def member_added(channel: str, user_id: str, user_info: Any) -> bytes:
    """`pusher_internal:member_added`; a member without info is sent without `user_info`."""
    member: dict[str, Any] = {"user_id": user_id}
    if user_info is not None:
        member["user_info"] = user_info
    return encode_event(MEMBER_ADDED, channel, _compact(member))


def member_removed(channel: str, user_id: str) -> bytes:
    """`pusher_internal:member_removed`."""
    return encode_event(MEMBER_REMOVED, channel, _compact({"user_id": user_id}))


def subscription_count(channel: str, count: int) -> bytes:
    """`pusher_internal:subscription_count`; pusher-js reads `data.subscription_count`."""
    return encode_event(SUBSCRIPTION_COUNT, channel, _compact({"subscription_count": count}))


def presence_data(members: dict[str, Any]) -> str:
    """`subscription_succeeded` data for a presence channel: ids, hash and count."""
    return _compact({"presence": {"ids": list(members), "hash": members, "count": len(members)}})


def presence_data_encoded(members: list[tuple[str, str]]) -> str:
    """`presence_data` from (user_id, user_info already as compact JSON) pairs.

    A roster read from Redis holds each user_info as the JSON `dumps` wrote: pasting it in
    spares decoding and encoding again every member of a 1,000-member roster on each join.
    """
    ids = [_string(user_id) for user_id, _ in members]
    pairs = ",".join([f"{key}:{info}" for key, (_, info) in zip(ids, members, strict=True)])
    return f'{{"presence":{{"ids":[{",".join(ids)}],"hash":{{{pairs}}},"count":{len(ids)}}}}}'


def parse_client_message(raw: str) -> tuple[str, str | None, Any]:
    """Parse one client frame into (event, channel, data) or raise PusherError."""
    try:
        message = loads(raw)
    except ValueError:
        raise PusherError(GENERIC_RECONNECT, "Invalid JSON") from None
    if not isinstance(message, dict):
        raise PusherError(GENERIC_RECONNECT, "Message must be a JSON object")
    event = message.get("event")
    if not isinstance(event, str) or not event:
        raise PusherError(GENERIC_RECONNECT, "Missing or invalid 'event'")
    channel = message.get("channel")
    if channel is not None and not isinstance(channel, str):
        raise PusherError(GENERIC_RECONNECT, "Invalid 'channel'")
    return event, channel, message.get("data")


def event_data_object(data: Any) -> dict[str, Any] | None:
    """The `data` of a pusher:* client event as an object; old clients send a JSON string."""
    if isinstance(data, str):
        try:
            data = loads(data)
        except ValueError:
            return None
    return data if isinstance(data, dict) else None
