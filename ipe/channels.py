"""What each kind of channel asks of a subscriber before it is let in.

`admit` runs the checks of the channel's kind and returns the presence member it joins as
(None on other channels); a refusal raises `Refused` with the channel-scoped error the
client receives. The kinds (prefixes in `ipe.protocol`):

- every channel: a name within `max_channel_name_length`, of the allowed characters;
- public and `cache-`: nothing more;
- `#server-to-user-{id}`: the socket is signed in as `{id}`;
- `private-`, `private-cache-`, `private-encrypted-[cache-]`: a signature over
  `socket_id:channel[:channel_data]` (encrypted payloads are never read by the server);
- `presence-[cache-]`: that signature, then a member from `channel_data` (or, without it,
  from the sign-in), within the user id and user_info limits; `check_room` then keeps the
  roster within `max_presence_members`.

What follows an admission (joining, announcing, a cache channel's replay) is `ipe.session`'s.
These functions do no I/O beyond reading a roster in `check_room`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, NamedTuple

from ipe import auth, protocol

if TYPE_CHECKING:
    from ipe.config import AppConfig, Limits
    from ipe.presence import Presence

Member = tuple[str, Any]  # (user_id, user_info)


class Subscriber(NamedTuple):
    """Who asks to subscribe: the socket, and the user it signed in as (if it did)."""

    socket_id: str
    user_id: str | None = None
    user_data: dict[str, Any] | None = None


class Refused(Exception):
    """A subscription refused: the `type`, `error` and `status` of its subscription_error."""

    def __init__(self, kind: str, error: str, status: int) -> None:
        super().__init__(kind, error, status)
        self.kind = kind
        self.error = error
        self.status = status


def admit(
    who: Subscriber, app: AppConfig, limits: Limits, channel: str, payload: dict[str, Any]
) -> Member | None:
    """Check a subscription to `channel`; the presence member it joins as, or None.

    `app` signs (its key and current secrets); `limits` are the subscriber's.
    """
    check_name(channel, limits)
    user_id = protocol.server_to_user_id(channel)
    if user_id is not None:
        if who.user_id != user_id:
            raise Refused(
                protocol.SUB_AUTH_ERROR,
                "Sign in as this user to subscribe to its channel",
                protocol.SUB_UNAUTHORIZED,
            )
        return None
    if not (protocol.is_private(channel) or protocol.is_presence(channel)):
        return None
    channel_data = payload.get("channel_data")
    check_signature(who, app, channel, payload.get("auth"), channel_data)
    if protocol.is_presence(channel):
        return presence_member(who, limits, channel_data)
    return None


def check_name(channel: str, limits: Limits) -> None:
    """A name within the length limit, of the allowed characters."""
    if len(channel) > limits.max_channel_name_length:
        raise Refused(
            protocol.SUB_LIMIT_REACHED,
            f"Channel name longer than {limits.max_channel_name_length} characters",
            protocol.SUB_TOO_LONG,
        )
    if not protocol.valid_channel_name(channel, limits.max_channel_name_length):
        raise Refused(
            protocol.SUB_INVALID_CHANNEL, "Invalid channel name", protocol.SUB_INVALID
        )


def check_signature(
    who: Subscriber, app: AppConfig, channel: str, token: Any, channel_data: Any
) -> None:
    """The app's signature over `socket_id:channel[:channel_data]`, with any of its secrets."""
    if channel_data is not None and not isinstance(channel_data, str):
        raise Refused(
            protocol.SUB_AUTH_ERROR, "channel_data must be a string", protocol.SUB_UNAUTHORIZED
        )
    socket_id = who.socket_id
    if not auth.channel_auth_valid(app.key, app.secrets, socket_id, channel, token, channel_data):
        signed = auth.channel_string_to_sign(socket_id, channel, channel_data)
        raise Refused(
            protocol.SUB_AUTH_ERROR,
            f"Invalid signature: Expected HMAC SHA256 hex digest of {signed}, "
            f"but got {str(token)[:200]}",
            protocol.SUB_UNAUTHORIZED,
        )


def presence_member(who: Subscriber, limits: Limits, channel_data: str | None) -> Member:
    """(user_id, user_info) from channel_data, or from the sign-in without it."""
    if channel_data is None:
        if who.user_data is None:
            raise Refused(
                protocol.SUB_AUTH_ERROR,
                "Presence channels need channel_data",
                protocol.SUB_UNAUTHORIZED,
            )
        user_id, info = who.user_id, who.user_data.get("user_info")
    else:
        try:
            parsed = json.loads(channel_data)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict) or parsed.get("user_id") in (None, ""):
            raise Refused(
                protocol.SUB_AUTH_ERROR,
                "channel_data must hold a user_id",
                protocol.SUB_UNAUTHORIZED,
            )
        raw_id = parsed["user_id"]
        if isinstance(raw_id, bool) or not isinstance(raw_id, str | int | float):
            raise Refused(
                protocol.SUB_AUTH_ERROR,
                "user_id must be a string or number",
                protocol.SUB_UNAUTHORIZED,
            )
        # Laravel sends integer ids: every id goes out as a string.
        user_id = raw_id if isinstance(raw_id, str) else json.dumps(raw_id)
        info = parsed.get("user_info")
    assert user_id is not None
    if len(user_id) > limits.max_user_id_length:
        raise Refused(
            protocol.SUB_LIMIT_REACHED,
            f"user_id longer than {limits.max_user_id_length} characters",
            protocol.SUB_TOO_LONG,
        )
    if info is not None and len(protocol.dumps(info).encode()) > limits.max_user_info_size:
        raise Refused(
            protocol.SUB_LIMIT_REACHED,
            f"user_info larger than {limits.max_user_info_size} bytes",
            protocol.SUB_USER_INFO_TOO_BIG,
        )
    return user_id, info


def check_room(
    presence: Presence, app_id: str, limits: Limits, channel: str, user_id: str
) -> None:
    """A new member fits in the presence channel (a returning user always does)."""
    roster = presence.members(app_id, channel)
    if user_id not in roster and len(roster) >= limits.max_presence_members:
        raise Refused(
            protocol.SUB_LIMIT_REACHED,
            "The maximum members per presence channel limit was reached",
            protocol.SUB_PRESENCE_FULL,
        )
