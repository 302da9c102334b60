"""Presence and occupancy are cluster-wide: rosters, member events once per user, REST counts."""

from __future__ import annotations

import json

from support import (
    frames_until_pong,
    join,
    occupied,
    presence_auth,
    rest_users,
    roster,
    settle,
    subscription_count,
    wait_until,
)
from support.observe import joins_at_once_heard_once

ROOM = "presence-room"


def test_roster_lists_members_of_every_node_and_member_events_cross(nodes):
    a, b = nodes(2)
    ann = join(a, ROOM, "ann", {"name": "Ann"})
    settle(a, b)
    bob = b.ws()
    assert bob.socket_id is not None
    auth, data = presence_auth(bob.socket_id, ROOM, "bob", {"name": "Bob"})
    reply = bob.subscribe(ROOM, auth, data)
    assert roster(reply)["hash"] == {"ann": {"name": "Ann"}, "bob": {"name": "Bob"}}
    assert roster(reply)["count"] == 2
    added = ann.expect("pusher_internal:member_added", ROOM)
    assert json.loads(added["data"]) == {"user_id": "bob", "user_info": {"name": "Bob"}}

    bob.close()
    removed = ann.expect("pusher_internal:member_removed", ROOM)
    assert json.loads(removed["data"]) == {"user_id": "bob"}
    ann.sync()


def test_one_user_on_two_nodes_counts_once(nodes):
    a, b = nodes(2)
    watcher = join(a, ROOM, "watcher")
    first = join(a, ROOM, "ann")
    watcher.expect("pusher_internal:member_added", ROOM)
    settle(a, b)
    second = join(b, ROOM, "ann")
    for server in (a, b):
        assert rest_users(server, ROOM) == {"watcher", "ann"}
        info = server.sdk().channel_info(ROOM, ["user_count", "subscription_count"])
        assert info == {"occupied": True, "user_count": 2, "subscription_count": 3}
        listing = server.sdk().channels_info("presence-", ["user_count"])
        assert listing == {"channels": {ROOM: {"user_count": 2}}}

    # Ann's second socket brought no member_added; closing one of two brings no removal.
    first.close()
    wait_until(
        lambda: a.sdk().channel_info(ROOM, ["subscription_count"])["subscription_count"] == 2
    )
    watcher.sync()
    assert rest_users(b, ROOM) == {"watcher", "ann"}

    second.close()
    removed = watcher.expect("pusher_internal:member_removed", ROOM)
    assert json.loads(removed["data"]) == {"user_id": "ann"}
    assert rest_users(b, ROOM) == {"watcher"}
    watcher.sync()


def test_channels_are_occupied_cluster_wide(nodes):
    a, b = nodes(2)
    client = a.ws()
    client.subscribe("orders")
    assert b.sdk().channels_info() == {"channels": {"orders": {}}}
    assert occupied(b, "orders")
    assert b.sdk().channel_info("orders", ["subscription_count"])["subscription_count"] == 1
    other = b.ws()
    other.subscribe("orders")
    assert a.sdk().channel_info("orders", ["subscription_count"])["subscription_count"] == 2
    client.close()
    other.send("pusher:unsubscribe", {"channel": "orders"})
    other.sync()
    wait_until(lambda: not occupied(a, "orders"), message="orders to be vacated")
    assert a.sdk().channels_info() == {"channels": {}}


def test_subscription_counts_are_cluster_wide_and_reach_every_node(nodes):
    a, b = nodes(2)
    watcher = a.ws(key="counted-key")  # app 1007 counts subscriptions
    assert watcher.subscribe("orders")["event"] == "pusher_internal:subscription_succeeded"
    assert subscription_count(watcher, "orders") == 1
    joiner = b.ws(key="counted-key")
    assert joiner.subscribe("orders")["event"] == "pusher_internal:subscription_succeeded"
    assert subscription_count(joiner, "orders") == 2
    assert subscription_count(watcher, "orders") == 2  # a change made on B, heard on A
    joiner.send("pusher:unsubscribe", {"channel": "orders"})
    assert subscription_count(watcher, "orders") == 1
    joiner.sync()
    watcher.sync()


def test_member_events_reach_each_socket_once_whatever_the_timing(nodes):
    """A member event in flight between nodes when a newcomer's roster is read is not applied
    twice: no socket hears member_added for a member its roster or an earlier event listed.

    Forty members subscribe at once, half on each node; without roster versions, several
    sockets are told about some members twice (the benchmark saw 7775 for 4950).
    """
    a, b = nodes(2)
    joins_at_once_heard_once(a, b, ROOM)


def test_a_member_coming_and_going_fast_ends_where_the_roster_does(nodes):
    """A user's sockets on one node join and leave at the same moment, over and over: its
    member_added and member_removed race on that node, and still reach every other member
    in the order of their versions, so everyone ends with the roster Redis holds."""
    a, b = nodes(2)
    watchers = [join(a, ROOM, "watch-a"), join(b, ROOM, "watch-b")]
    previous = None
    for _ in range(30):
        client = a.ws()
        assert client.socket_id is not None
        auth, data = presence_auth(client.socket_id, ROOM, "flip")
        client.send("pusher:subscribe", {"channel": ROOM, "auth": auth, "channel_data": data})
        if previous is not None:
            previous.close()  # its leave races the next socket's join on node a
        previous = client
    assert previous is not None
    previous.expect("pusher_internal:subscription_succeeded", ROOM)
    settle(a, b)
    assert "flip" in rest_users(a, ROOM)
    for watcher in watchers:
        flips = [
            frame["event"].rsplit("_", 1)[1]
            for frame in frames_until_pong(watcher)
            if frame["event"] in ("pusher_internal:member_added", "pusher_internal:member_removed")
            and json.loads(frame["data"])["user_id"] == "flip"
        ]
        # Never two of a kind in a row (none missed, none repeated), and flip is in at the end.
        assert flips and flips[0] == "added" and flips[-1] == "added", flips
        assert all(x != y for x, y in zip(flips, flips[1:], strict=False)), flips
