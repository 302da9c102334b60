"""Subscription counting (protocol-notes.md §2.7): subscribers hear each change of the count.

App 1007 (`counted-key`) has `subscription_count: true`; app 1001 has Pusher's default (off).
"""

from __future__ import annotations

import json
from typing import Any

COUNTED_KEY = "counted-key"
COUNT = "pusher_internal:subscription_count"
SUCCEEDED = "pusher_internal:subscription_succeeded"


MASTER_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="  # for encrypted channels' tokens


def counted_sdk(server: Any) -> Any:
    """The Python SDK for app 1007, able to authorize encrypted channels too."""
    return server.sdk(
        "1007", COUNTED_KEY, "counted-secret", encryption_master_key_base64=MASTER_KEY
    )


def count_of(message: dict[str, Any], channel: str) -> int:
    """The number a subscription_count frame carries, checking the frame's shape."""
    assert message["event"] == COUNT, message
    assert message["channel"] == channel, message
    assert isinstance(message["data"], str), "data is a JSON string, as in every pusher_internal"
    data = json.loads(message["data"])
    assert list(data) == ["subscription_count"], data
    return data["subscription_count"]  # type: ignore[no-any-return]


def next_count(client: Any, channel: str, timeout: float | None = None) -> int:
    return count_of(client.recv(timeout), channel)


def test_subscribers_hear_every_change_after_their_confirmation(shared_server):
    a = shared_server.ws(key=COUNTED_KEY)
    b = shared_server.ws(key=COUNTED_KEY)
    c = shared_server.ws(key=COUNTED_KEY)
    assert a.subscribe("orders")["event"] == SUCCEEDED
    assert next_count(a, "orders") == 1
    assert b.subscribe("orders")["event"] == SUCCEEDED  # the confirmation comes first
    assert next_count(b, "orders") == 2
    assert next_count(a, "orders") == 2
    assert c.subscribe("orders")["event"] == SUCCEEDED
    assert next_count(c, "orders") == 3
    assert [next_count(x, "orders") for x in (a, b)] == [3, 3]

    b.send("pusher:unsubscribe", {"channel": "orders"})
    assert next_count(a, "orders") == 2
    assert next_count(c, "orders") == 2
    b.sync()  # no longer subscribed: it hears no count
    c.close()  # a disconnect counts as leaving
    assert next_count(a, "orders") == 1
    # Subscribing again changes nothing: no count.
    assert a.subscribe("orders")["event"] == SUCCEEDED
    a.sync()


def test_private_encrypted_and_cache_channels_count_too(shared_server):
    sdk = counted_sdk(shared_server)
    a = shared_server.ws(key=COUNTED_KEY)
    b = shared_server.ws(key=COUNTED_KEY)
    for channel in ("private-orders", "private-encrypted-orders"):
        assert a.subscribe_signed(sdk, channel)["event"] == SUCCEEDED
        assert next_count(a, channel) == 1
        assert b.subscribe_signed(sdk, channel)["event"] == SUCCEEDED
        assert next_count(b, channel) == 2
        assert next_count(a, channel) == 2
    # A cache channel's miss (or replay) comes right after the confirmation, the count after.
    assert a.subscribe("cache-scores")["event"] == SUCCEEDED
    a.expect("pusher:cache_miss", "cache-scores")
    assert next_count(a, "cache-scores") == 1
    a.sync()
    b.sync()


def test_presence_and_server_to_user_channels_have_no_count(shared_server):
    sdk = counted_sdk(shared_server)
    ann = shared_server.ws(key=COUNTED_KEY)
    bob = shared_server.ws(key=COUNTED_KEY)
    assert ann.subscribe_signed(sdk, "presence-room", {"user_id": "ann"})["event"] == SUCCEEDED
    assert bob.subscribe_signed(sdk, "presence-room", {"user_id": "bob"})["event"] == SUCCEEDED
    ann.expect("pusher_internal:member_added", "presence-room")
    ann.sync()  # nothing else came: no count
    bob.sync()

    assert ann.sign_in(sdk, {"id": "ann"})["event"] == "pusher:signin_success"
    assert ann.subscribe("#server-to-user-ann")["event"] == SUCCEEDED
    ann.sync()


def test_no_count_when_the_app_has_not_turned_counting_on(shared_server):
    a = shared_server.ws()  # app 1001: subscription_count is off, as on Pusher by default
    b = shared_server.ws()
    assert a.subscribe("orders")["event"] == SUCCEEDED
    assert b.subscribe("orders")["event"] == SUCCEEDED
    b.send("pusher:unsubscribe", {"channel": "orders"})
    b.sync()
    a.sync()  # the pong comes first: no count was sent for any of the three changes


def test_above_100_subscribers_counts_are_paced_and_the_last_one_is_exact(shared_server):
    channel = "crowd"
    watcher = shared_server.ws(key=COUNTED_KEY)
    assert watcher.subscribe(channel)["event"] == SUCCEEDED
    crowd = []
    for _ in range(100):
        client = shared_server.ws(key=COUNTED_KEY)
        assert client.subscribe(channel)["event"] == SUCCEEDED
        crowd.append(client)
    # Up to 100, and at the change that crosses it, every count goes out at once, in order.
    assert [next_count(watcher, channel) for _ in range(101)] == list(range(1, 102))

    for _ in range(10):
        client = shared_server.ws(key=COUNTED_KEY)
        assert client.subscribe(channel)["event"] == SUCCEEDED
        crowd.append(client)
    # 111 now. Within Pusher's 5 s window the changes are held; its end sends the count then.
    later = [next_count(watcher, channel, timeout=8)]
    while later[-1] != 111:
        later.append(next_count(watcher, channel, timeout=8))
    assert len(later) <= 3, f"one message per window, not one per change: {later}"

    # On the way down the window opened by that send holds the changes, until the count is
    # back at 100, which goes out at once.
    for client in crowd[-11:]:
        client.send("pusher:unsubscribe", {"channel": channel})
    downs = [next_count(watcher, channel, timeout=8)]
    while downs[-1] != 100:
        downs.append(next_count(watcher, channel, timeout=8))
    assert len(downs) <= 3, f"one message per window, not one per change: {downs}"
    watcher.sync()
