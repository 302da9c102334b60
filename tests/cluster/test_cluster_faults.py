"""Failures: a node killed with SIGKILL, Redis restarted, paused, or missing at start."""

from __future__ import annotations

import json
import signal

from support import (
    RedisServer,
    after_sweeps,
    free_low_port,
    join,
    metric,
    occupied,
    ready_status,
    redis_config,
    rest_users,
    settle,
    sign_in,
    subscription_count,
    wait_ready,
    wait_until,
)

ROOM = "presence-room"


def test_killed_node_is_reaped_once_by_the_survivors(nodes):
    a, b, c = nodes(3)
    watcher_a = join(a, ROOM, "watcher-a")
    sign_in(watcher_a, "watcher-a", watchlist=["ann"])
    watcher_a.expect("pusher_internal:watchlist_events")
    settle(a, b, c)
    watcher_c = join(c, ROOM, "watcher-c")
    watchers = [watcher_a, watcher_c]
    watcher_a.expect("pusher_internal:member_added", ROOM)
    settle(a, b, c)
    ann = join(b, ROOM, "ann", {"name": "Ann"})
    sign_in(ann, "ann")
    only_on_b = b.ws()
    only_on_b.subscribe("orders")
    for watcher in watchers:
        added = watcher.expect("pusher_internal:member_added", ROOM)
        assert json.loads(added["data"])["user_id"] == "ann"
    assert watcher_a.expect("pusher_internal:watchlist_events")["data"] == {
        "events": [{"name": "online", "user_ids": ["ann"]}]
    }
    assert occupied(a, "orders")

    b.kill()  # SIGKILL: no cleanup, its heartbeat just stops

    for watcher in watchers:
        removed = watcher.expect("pusher_internal:member_removed", ROOM, timeout=30)
        assert json.loads(removed["data"]) == {"user_id": "ann"}
    offline = watcher_a.expect("pusher_internal:watchlist_events", timeout=30)
    assert offline["data"] == {"events": [{"name": "offline", "user_ids": ["ann"]}]}
    for server in (a, c):
        assert rest_users(server, ROOM) == {"watcher-a", "watcher-c"}
        assert not occupied(server, "orders")
        assert server.sdk().channel_info(ROOM, ["subscription_count"])["subscription_count"] == 2
    # Exactly once: two janitors raced, one of them reaped, nothing else was sent.
    after_sweeps(a, c)
    for watcher in watchers:
        watcher.sync()
    assert metric(a, "ipe_nodes_reaped_total") + metric(c, "ipe_nodes_reaped_total") == 1
    assert (a.log() + c.log()).count("of app 1001: 1 vacated, 1 removed, 1 offline") == 1


def test_reaping_a_killed_node_sends_the_counts_it_changed(nodes):
    a, b = nodes(2)
    watcher = a.ws(key="counted-key")  # app 1007 counts subscriptions
    watcher.subscribe("orders")
    assert subscription_count(watcher, "orders") == 1
    for n in (2, 3):
        b.ws(key="counted-key").subscribe("orders")
        assert subscription_count(watcher, "orders") == n

    b.kill()  # SIGKILL: its two subscriptions stay counted until A's janitor reaps B

    assert subscription_count(watcher, "orders", timeout=30) == 1
    assert a.sdk("1007", "counted-key", "counted-secret").channel_info(
        "orders", ["subscription_count"]
    ) == {"occupied": True, "subscription_count": 1}
    watcher.sync()


def _tick(server, clients, text):
    server.sdk().trigger("ticks", "tick", text)
    for client in clients:
        assert client.expect("tick", "ticks")["data"] == text


def test_redis_restart_loses_nothing_but_in_flight_messages(nodes, redis_server: RedisServer):
    a, b = nodes(2)
    watcher = join(a, ROOM, "watcher")
    settle(a, b)
    ann = join(b, ROOM, "ann")
    watcher.expect("pusher_internal:member_added", ROOM)
    on_a, on_b = a.ws(), b.ws()
    for client in (on_a, on_b):
        client.subscribe("ticks")
    _tick(a, [on_a, on_b], "before")

    redis_server.stop()
    for server in (a, b):
        wait_until(lambda s=server: ready_status(s) == 503, 15, message="/ready to be 503")
        assert server.sdk().channel_info("ticks")["occupied"]  # local knowledge meanwhile
    # Each node keeps serving its own clients; other nodes cannot be reached.
    _tick(a, [on_a], "during-a")
    _tick(b, [on_b], "during-b")
    assert metric(a, "ipe_broker_publish_failures_total") >= 1  # counted (and logged)
    assert "delivered on this node only" in a.log()

    redis_server.start()  # same port, empty: everything must be registered again
    for server in (a, b):
        wait_ready(server)
    for server in (a, b):
        wait_until(lambda s=server: rest_users(s, ROOM) == {"watcher", "ann"}, 15)
        assert server.sdk().channel_info("ticks", ["subscription_count"]) == {
            "occupied": True,
            "subscription_count": 2,
        }
    for i in range(5):
        _tick(b, [on_a, on_b], f"after-{i}")
    for client in (watcher, on_a, on_b):
        client.sync()  # no member events for the restore, no duplicates

    ann.close()
    removed = watcher.expect("pusher_internal:member_removed", ROOM)
    assert json.loads(removed["data"]) == {"user_id": "ann"}
    for server in (a, b):
        assert "Traceback" not in server.log()


def test_redis_paused_then_resumed(nodes, redis_server: RedisServer):
    a, b = nodes(2)
    watcher = join(a, ROOM, "watcher")
    on_a, on_b = a.ws(), b.ws()
    for client in (on_a, on_b):
        client.subscribe("ticks")
    _tick(a, [on_a, on_b], "before")

    redis_server.pause()  # SIGSTOP: connections stay open and nothing answers
    for server in (a, b):
        wait_until(lambda s=server: ready_status(s) == 503, 15, message="/ready to be 503")
    _tick(a, [on_a], "during")
    # Bob joins on B while Redis cannot tell anyone: A hears of him once Redis is back.
    bob = join(b, ROOM, "bob")

    redis_server.resume()
    for server in (a, b):
        wait_ready(server)
    for server in (a, b):
        wait_until(lambda s=server: rest_users(s, ROOM) == {"watcher", "bob"}, 15)
    # B tells the others about Bob once Redis is back, but A may not be listening yet:
    # Pub/Sub keeps nothing for late subscribers, so that member_added is best effort;
    # what matters is that it is not repeated.
    watcher.send("pusher:ping", {})
    frames = []
    while (frame := watcher.recv())["event"] != "pusher:pong":
        frames.append(frame)
    assert frames in (
        [],
        [{"event": "pusher_internal:member_added", "channel": ROOM, "data": '{"user_id":"bob"}'}],
    ), frames
    for i in range(5):
        _tick(b, [on_a, on_b], f"after-{i}")
    for client in (on_a, on_b, bob):
        client.sync()


def test_frozen_node_is_reaped_then_comes_back(nodes):
    a, b = nodes(2)
    watcher = join(a, ROOM, "watcher")
    settle(a, b)
    ann = join(b, ROOM, "ann", {"name": "Ann"})
    watcher.expect("pusher_internal:member_added", ROOM)

    b.proc.send_signal(signal.SIGSTOP)  # B stops beating but keeps its sockets
    try:
        removed = watcher.expect("pusher_internal:member_removed", ROOM, timeout=30)
        assert json.loads(removed["data"]) == {"user_id": "ann"}
        assert rest_users(a, ROOM) == {"watcher"}
    finally:
        b.proc.send_signal(signal.SIGCONT)

    # B finds its heartbeat gone, writes its share back and says so to everyone.
    added = watcher.expect("pusher_internal:member_added", ROOM, timeout=30)
    assert json.loads(added["data"]) == {"user_id": "ann", "user_info": {"name": "Ann"}}
    assert rest_users(a, ROOM) == {"watcher", "ann"}
    # Ann's own node told her what everyone heard: she left, and is back.
    ann.wait_for("pusher_internal:member_removed", ROOM)
    ann.expect("pusher_internal:member_added", ROOM)
    for client in (watcher, ann):
        client.sync()


def test_start_without_redis_then_redis_appears(make_server, make_redis):
    redis_server = make_redis(start=False)
    a = make_server(redis_config(redis_server.url), name="early")
    assert ready_status(a) == 503
    wait_until(lambda: "unreachable" in a.log(), message="a log line about Redis")
    local = a.ws()
    local.subscribe("orders")
    a.sdk().trigger("orders", "update", "served locally")
    assert local.expect("update", "orders")["data"] == "served locally"

    redis_server.start()
    wait_ready(a, 30)
    b = make_server(redis_config(redis_server.url), name="late")
    wait_ready(b)
    assert b.sdk().channel_info("orders")["occupied"]  # A registered what it had
    b.sdk().trigger("orders", "update", "across")
    assert local.expect("update", "orders")["data"] == "across"
    local.sync()


def test_start_without_a_redis_cluster_serves_locally(make_server):
    nowhere = f"127.0.0.1:{free_low_port()}"
    a = make_server(
        redis_config(), env={"REDIS_CLUSTER_MODE": "true", "REDIS_ADDRS": nowhere}, name="alone"
    )
    wait_until(lambda: "unreachable" in a.log(), message="a log line about Redis")
    assert ready_status(a) == 503
    client = a.ws()
    client.subscribe("orders")
    a.sdk().trigger("orders", "update", "local")
    assert client.expect("update", "orders")["data"] == "local"
    assert a.sdk().channel_info("orders")["occupied"]
