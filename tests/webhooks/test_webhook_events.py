"""Webhook events as Pusher sends them: fields, batching, the grace period, filters, targets.

A real ipe process posts to a real receiver in the test, which checks every request with the
official SDK's validate_webhook; real WebSocket clients and the SDK cause the events.
"""

from __future__ import annotations

import json

from support import hook_config, presence_member, subscribe, wait_until

FAST = {"batch_window": 0.05, "grace_period": 0}


def test_every_event_type_with_its_fields(receivers, make_server):
    hook = receivers()
    server = make_server(hook_config([{"url": hook.url}], **FAST))
    a = server.ws()
    b = server.ws()

    a.subscribe("orders")
    assert hook.wait_event("channel_occupied", channel="orders") == {
        "name": "channel_occupied",
        "channel": "orders",
    }

    assert a.subscribe("cache-news")["event"] == "pusher_internal:subscription_succeeded"
    a.expect("pusher:cache_miss", "cache-news")
    assert hook.wait_event("cache_miss") == {"name": "cache_miss", "channel": "cache-news"}

    subscribe(a, "presence-room", presence_member("42", {"name": "Ann"}))
    # Laravel sends integer ids: the webhook carries the string, as everywhere else.
    subscribe(b, "presence-room", presence_member(7))
    assert hook.wait_event("member_added", user_id="42") == {
        "name": "member_added",
        "channel": "presence-room",
        "user_id": "42",
    }
    hook.wait_event("member_added", user_id="7")

    a.send("client-typing", {"on": True}, channel="presence-room")
    assert hook.wait_event("client_event", channel="presence-room") == {
        "name": "client_event",
        "channel": "presence-room",
        "event": "client-typing",
        "data": '{"on":true}',
        "socket_id": a.socket_id,
        "user_id": "42",
    }
    subscribe(b, "private-chat")
    b.send("client-note", "plain text", channel="private-chat")
    assert hook.wait_event("client_event", channel="private-chat") == {
        "name": "client_event",
        "channel": "private-chat",
        "event": "client-note",
        "data": "plain text",
        "socket_id": b.socket_id,
    }

    a.send("pusher:unsubscribe", {"channel": "presence-room"})
    assert hook.wait_event("member_removed", user_id="42") == {
        "name": "member_removed",
        "channel": "presence-room",
        "user_id": "42",
    }
    b.close()  # the last subscriber of presence-room and private-chat disconnects
    hook.wait_event("member_removed", user_id="7")
    assert hook.wait_event("channel_vacated", channel="presence-room") == {
        "name": "channel_vacated",
        "channel": "presence-room",
    }
    hook.wait_event("channel_vacated", channel="private-chat")

    for request in hook.delivered():
        assert request.path == "/hook"
        assert request.headers["Content-Type"] == "application/json"  # exactly
        assert request.headers["X-Pusher-Key"] == "demo-key"
        assert isinstance(request.valid["time_ms"], int)
    # Each transition once, never more.
    assert len(hook.events("channel_occupied", channel="presence-room")) == 1
    assert len(hook.events("member_added")) == 2
    assert len(hook.events("channel_vacated")) == 2


def test_events_are_batched_by_size_then_by_window(receivers, make_server):
    hook = receivers()
    server = make_server(
        hook_config([{"url": hook.url}], batch_window=2, max_batch_size=3, grace_period=0)
    )
    client = server.ws()
    for name in ("b1", "b2", "b3", "b4"):
        client.subscribe(name)
    # Three events fill a batch at once; the fourth waits for the window, then goes alone.
    wait_until(lambda: len(hook.events("channel_occupied")) == 4, message="4 occupied events")
    batches = [[e["channel"] for e in request.events] for request in hook.delivered()]
    assert batches == [["b1", "b2", "b3"], ["b4"]]


def test_a_return_within_the_grace_period_cancels_both_events(receivers, make_server):
    hook = receivers()
    # The default grace period (3 s) with a short batch window.
    server = make_server(hook_config([{"url": hook.url}], batch_window=0.05))
    sdk = server.sdk()

    a = server.ws()
    subscribe(a, "presence-room", presence_member("u1"))
    lobby = server.ws()
    subscribe(lobby, "presence-lobby", presence_member("u3"))
    hook.wait_event("member_added", user_id="u1")
    hook.wait_event("member_added", user_id="u3")

    # A page reload: the old connection is gone (the server saw it leave) before the new one.
    a.close()
    wait_until(lambda: sdk.users_info("presence-room")["users"] == [], message="u1 to have left")
    reloaded = server.ws()
    subscribe(reloaded, "presence-room", presence_member("u1"))
    # A single-page app leaving and re-entering a room on the same connection.
    lobby.send("pusher:unsubscribe", {"channel": "presence-lobby"})
    lobby.sync()
    subscribe(lobby, "presence-lobby", presence_member("u3"))

    # A marker that leaves for good after both returns; its events are released after theirs
    # would have been, on the same ordered lane.
    marker = server.ws()
    subscribe(marker, "presence-marker", presence_member("u2"))
    hook.wait_event("member_added", user_id="u2")
    marker.send("pusher:unsubscribe", {"channel": "presence-marker"})
    marker.sync()
    # And u1 now leaves for longer than the grace period: removed after it.
    reloaded.close()

    hook.wait_event("member_removed", user_id="u2")
    hook.wait_event("member_removed", user_id="u1")
    hook.wait_event("channel_vacated", channel="presence-room")
    events = [(e["name"], e["channel"], e.get("user_id")) for e in hook.events()]
    marker_at = events.index(("member_removed", "presence-marker", "u2"))
    before_marker = events[:marker_at]
    assert ("member_removed", "presence-room", "u1") not in before_marker
    assert ("channel_vacated", "presence-room", None) not in before_marker
    assert ("member_removed", "presence-lobby", "u3") not in events
    assert ("channel_vacated", "presence-lobby", None) not in events
    # Neither was re-added: one add and one occupied for each of them, ever.
    assert events.count(("member_added", "presence-room", "u1")) == 1
    assert events.count(("channel_occupied", "presence-room", None)) == 1
    assert events.count(("member_added", "presence-lobby", "u3")) == 1
    assert events.count(("channel_occupied", "presence-lobby", None)) == 1
    # The one that left for good was removed once, after the grace period.
    assert events.count(("member_removed", "presence-room", "u1")) == 1
    assert events.count(("channel_vacated", "presence-room", None)) == 1
    assert ("channel_vacated", "presence-marker", None) in events


def test_filters_headers_and_several_targets(receivers, make_server):
    members = receivers()
    everything = receivers()
    other_app = receivers(key="other-key", secret="other-secret", app_id="1002")
    server = make_server(
        hook_config(
            [
                {
                    "url": members.url,
                    "event_types": ["member_added", "member_removed"],
                    "channel_prefix": "presence-",
                    "headers": {"X-Hook-Token": "abc", "Authorization": "Bearer t0ken"},
                },
                {"url": everything.url},
            ],
            other={"enabled": True, "url": other_app.url},  # IPÊ's single-target form
            **FAST,
        )
    )
    client = server.ws()
    client.subscribe("orders")
    subscribe(client, "presence-room", presence_member("42"))
    client.send("pusher:unsubscribe", {"channel": "presence-room"})
    client.sync()
    other = server.ws(key="other-key")
    other.subscribe("elsewhere")

    everything.wait_event("channel_vacated", channel="presence-room")
    members.wait_event("member_removed", user_id="42")
    other_app.wait_event("channel_occupied", channel="elsewhere")

    # The filtered target gets only what matches, and the body it can verify holds only that.
    assert [(e["name"], e["channel"]) for e in members.events()] == [
        ("member_added", "presence-room"),
        ("member_removed", "presence-room"),
    ]
    for request in members.delivered():
        assert request.headers["X-Hook-Token"] == "abc"
        assert request.headers["Authorization"] == "Bearer t0ken"
        assert request.headers["X-Pusher-Key"] == "demo-key"
        assert all(e["channel"].startswith("presence-") for e in json.loads(request.body)["events"])
    assert [(e["name"], e["channel"]) for e in everything.events()] == [
        ("channel_occupied", "orders"),
        ("channel_occupied", "presence-room"),
        ("member_added", "presence-room"),
        ("member_removed", "presence-room"),
        ("channel_vacated", "presence-room"),
    ]
    for request in everything.delivered():
        assert "X-Hook-Token" not in request.headers
    # The other app's webhooks are its own, signed with its own secret.
    assert [e["channel"] for e in other_app.events()] == ["elsewhere"]
    assert all(r.headers["X-Pusher-Key"] == "other-key" for r in other_app.delivered())


def test_subscription_count_webhook_carries_each_new_count(receivers, make_server):
    counts = receivers()
    everything = receivers()
    config = hook_config(
        [{"url": counts.url, "event_types": ["subscription_count"]}, {"url": everything.url}],
        **FAST,
    )
    config["apps"][0]["subscription_count"] = True  # Pusher's toggle, off by default
    server = make_server(config)
    count = "pusher_internal:subscription_count"
    a = server.ws()
    b = server.ws()
    a.subscribe("orders")
    a.expect(count, "orders")
    b.subscribe("orders")
    b.expect(count, "orders")
    a.expect(count, "orders")
    subscribe(a, "presence-room", presence_member("42"))  # presence channels have no count
    b.send("pusher:unsubscribe", {"channel": "orders"})
    b.sync()  # b's leave is done before a's
    a.expect(count, "orders")
    a.send("pusher:unsubscribe", {"channel": "orders"})
    a.sync()

    wait_until(lambda: len(counts.events()) == 4, message="four subscription_count webhooks")
    assert counts.events() == [
        {"name": "subscription_count", "channel": "orders", "subscription_count": n}
        for n in (1, 2, 1, 0)
    ]
    # A target with the default filter gets them among the others, in order.
    everything.wait_event("channel_vacated", channel="orders")
    assert [
        (e["name"], e.get("subscription_count"))
        for e in everything.events()
        if e["channel"] == "orders"
    ] == [
        ("channel_occupied", None),
        ("subscription_count", 1),
        ("subscription_count", 2),
        ("subscription_count", 1),
        ("subscription_count", 0),
        ("channel_vacated", None),
    ]
