"""Kept so that `from receiver import ...` goes on working: the receiver is in
`support.webhooks`, the `receivers` fixture in tests/conftest.py."""

from support.webhooks import *  # noqa: F403


def presence_auth(server, client, channel, user_id, info=None):  # noqa: ANN001, ANN201
    """Subscribe `client` to a presence channel as `user_id` (use support.subscribe)."""
    from support.auth import presence_member, subscribe

    return subscribe(client, channel, presence_member(user_id, info))


def private_subscribe(server, client, channel):  # noqa: ANN001, ANN201
    """Subscribe `client` to a private channel (use support.subscribe)."""
    from support.auth import subscribe

    subscribe(client, channel)
