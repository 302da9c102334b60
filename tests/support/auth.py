"""The one way tests sign: the official Python SDK (`pusher` from PyPI).

Subscriptions and sign-ins go through the SDK's `authenticate` / `authenticate_user`. Strings
the SDK would never produce (compact JSON as Node and PHP apps sign it, a broken user_data)
are signed with the SDK's own `pusher.signature.sign`, so no test writes its own HMAC.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pusher
import pusher.signature

from support.apps import APP_IDS, KEY, SECRETS

if TYPE_CHECKING:
    from support.client import WsClient
    from support.server import IpeServer


def sdk_for(key: str = KEY, port: int = 80) -> pusher.Pusher:
    """An SDK client for one of BASE_CONFIG's apps (by key), to sign with or to call `port`."""
    return pusher.Pusher(
        app_id=APP_IDS[key],
        key=key,
        secret=SECRETS[key],
        host="127.0.0.1",
        port=port,
        ssl=False,
    )


def token(string_to_sign: str, key: str = KEY) -> str:
    """`key:signature` of an arbitrary string, signed by the SDK with that app's secret."""
    return f"{key}:{pusher.signature.sign(SECRETS[key], string_to_sign)}"


def channel_auth(
    socket_id: str, channel: str, member: Any = None, key: str = KEY
) -> dict[str, str]:
    """The SDK's `authenticate` answer: {"auth"} (plus "channel_data" for a presence member)."""
    return sdk_for(key).authenticate(channel, socket_id, member)  # type: ignore[no-any-return]


def presence_auth(
    socket_id: str, channel: str, user_id: Any, info: Any = None, key: str = KEY
) -> tuple[str, str]:
    """(auth, channel_data) of a presence member, from the SDK's `authenticate`."""
    signed = channel_auth(socket_id, channel, presence_member(user_id, info), key)
    return signed["auth"], signed["channel_data"]


def private_auth(socket_id: str, channel: str, key: str = KEY) -> str:
    """The auth of a private channel subscription, from the SDK's `authenticate`."""
    return channel_auth(socket_id, channel, None, key)["auth"]


def presence_member(user_id: Any, info: Any = None) -> dict[str, Any]:
    """The channel_data of a presence member as apps pass it to the SDK."""
    member: dict[str, Any] = {"user_id": user_id}
    if info is not None:
        member["user_info"] = info
    return member


def subscribe(
    client: WsClient, channel: str, member: Any = None, key: str | None = None
) -> dict[str, Any]:
    """Subscribe to any channel (signed when it needs a signature); returns the confirmation.

    Skips other frames up to the channel's `subscription_succeeded`; a refusal fails.
    """
    key = key or client.key
    data: dict[str, Any] = {"channel": channel, "auth": ""}
    if channel.startswith(("private-", "presence-")):
        assert client.socket_id is not None
        data.update(channel_auth(client.socket_id, channel, member, key))
    client.send("pusher:subscribe", data)
    answers = ("pusher_internal:subscription_succeeded", "pusher:subscription_error")
    while True:
        reply = client.recv()
        if reply.get("channel") == channel and reply["event"] in answers:
            assert reply["event"] == answers[0], reply
            return reply


def join(
    server: IpeServer, channel: str, user_id: Any, info: Any = None, key: str | None = None
) -> WsClient:
    """A new client on `server` (app `key`, default the server's), subscribed to a presence
    channel as `user_id`.

    Returns after a ping round trip, so the node has handled the whole subscribe
    (member_added published included). The roster it got is in `client.joined`.
    """
    client = server.ws(key=key)
    reply = subscribe(client, channel, presence_member(user_id, info))
    assert isinstance(reply["data"], str), f"presence data must be a JSON string: {reply}"
    client.joined = json.loads(reply["data"])["presence"]
    client.sync()
    return client


def sign_in(
    client: WsClient, user: dict[str, Any] | str, watchlist: list[str] | None = None
) -> dict[str, Any]:
    """Sign in with the SDK's `authenticate_user` token; returns the `pusher:signin_success`.

    (A watchlist's `pusher_internal:watchlist_events` may follow. To see a refusal, use
    `WsClient.sign_in`, which returns whatever the reply is.)"""
    user_data = {"id": user} if isinstance(user, str) else dict(user)
    if watchlist is not None:
        user_data["watchlist"] = watchlist
    assert client.socket_id is not None
    signed = sdk_for(client.key).authenticate_user(client.socket_id, user_data)
    client.send("pusher:signin", {"auth": signed["auth"], "user_data": signed["user_data"]})
    return client.expect("pusher:signin_success")
