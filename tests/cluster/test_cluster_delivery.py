"""Events cross nodes through Redis: REST triggers, client events, exclusion, users, order."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import websocket
from support import private_auth, sign_in


def test_client_on_node_a_receives_trigger_sent_to_node_b(nodes):
    a, b = nodes(2)
    client = a.ws()
    client.subscribe("orders")
    assert b.sdk().trigger("orders", "order-updated", {"id": 7}) == {}
    message = client.expect("order-updated", "orders")
    assert json.loads(message["data"]) == {"id": 7}
    client.sync()  # exactly once: nothing else was queued


def test_every_event_reaches_every_client_once_and_in_order(nodes):
    a, b, c = nodes(3)
    clients = [server.ws() for server in (a, b, c) for _ in range(2)]
    for client in clients:
        client.subscribe("ticks")
    sdk = b.sdk()
    for i in range(30):
        sdk.trigger("ticks", "tick", str(i))
    for client in clients:
        got = [client.expect("tick", "ticks")["data"] for _ in range(30)]
        assert got == [str(i) for i in range(30)]
        client.sync()


def test_bursts_from_another_node_arrive_whole_in_order_and_honour_exclusion(nodes):
    """Events that reach a node together go to each socket in one write: every one of them
    still arrives once, in order, and a socket excluded from some misses exactly those."""
    a, b = nodes(2)
    plain, excluded = b.ws(), b.ws()
    for client in (plain, excluded):
        client.subscribe("bursts")
    sdk = a.sdk()
    events = []
    for burst in range(20):  # each batch is published in one pipeline: it arrives together
        batch = []
        for i in range(10):
            n = burst * 10 + i
            event = {"channel": "bursts", "name": "tick", "data": str(n)}
            if n % 3 == 0:
                event["socket_id"] = excluded.socket_id
            batch.append(event)
        sdk.trigger_batch(batch)
        events.extend(batch)
    for client in (plain, excluded):
        wanted = [e["data"] for e in events if e.get("socket_id") != client.socket_id]
        got = [client.expect("tick", "bursts")["data"] for _ in wanted]
        assert got == wanted
        client.sync()


def test_no_event_reaches_a_socket_before_its_subscription_succeeded(nodes):
    """A subscription's Redis round trips let deliveries run meanwhile; events published then
    wait for the confirmation (a cache channel's replay included), they never precede it."""
    a, b = nodes(2)
    stop = threading.Event()

    def publish_until_stopped() -> int:
        sdk = a.sdk()
        sent = 0
        while not stop.is_set():
            sdk.trigger(["busy", "cache-busy"], "tick", str(sent))
            sent += 1
        return sent

    with ThreadPoolExecutor(1) as pool:
        publisher = pool.submit(publish_until_stopped)
        try:
            watcher = b.ws()
            watcher.subscribe("busy")
            watcher.expect("tick", "busy")  # events are flowing through node b
            watcher.close()
            for channel in ["busy", "cache-busy"] * 25:
                client = b.ws()
                reply = client.subscribe(channel)
                assert reply["event"] == "pusher_internal:subscription_succeeded", reply
                client.expect("tick", channel)  # and events do follow it
                client.close()
        finally:
            stop.set()
        assert publisher.result() > 0


def test_socket_id_exclusion_across_nodes(nodes):
    a, b = nodes(2)
    sender = a.ws()
    sender.subscribe("orders")
    other_a = a.ws()
    other_a.subscribe("orders")
    other_b = b.ws()
    other_b.subscribe("orders")
    b.sdk().trigger("orders", "update", "x", socket_id=sender.socket_id)
    other_a.expect("update", "orders")
    other_b.expect("update", "orders")
    sender.sync()  # the excluded socket got nothing


def test_client_events_cross_nodes_and_skip_the_sender(nodes):
    a, b = nodes(2)
    sender = a.ws()
    assert sender.socket_id is not None
    sender.subscribe("private-chat", private_auth(sender.socket_id, "private-chat"))
    peers = []
    for server in (a, b):
        peer = server.ws()
        assert peer.socket_id is not None
        peer.subscribe("private-chat", private_auth(peer.socket_id, "private-chat"))
        peers.append(peer)
    for i in range(5):
        sender.send("client-typing", {"n": i}, channel="private-chat")
    for peer in peers:
        for i in range(5):
            assert peer.expect("client-typing", "private-chat")["data"] == {"n": i}
        peer.sync()
    sender.sync()


def test_server_to_user_terminate_and_watchlist_across_nodes(nodes):
    a, b = nodes(2)
    watcher = a.ws()
    sign_in(watcher, "watcher", watchlist=["ann"])
    assert watcher.expect("pusher_internal:watchlist_events")["data"] == {
        "events": [{"name": "offline", "user_ids": ["ann"]}]
    }
    ann = b.ws()
    sign_in(ann, "ann")
    online = watcher.expect("pusher_internal:watchlist_events")
    assert online["data"] == {"events": [{"name": "online", "user_ids": ["ann"]}]}

    # A REST event to #server-to-user-ann sent to node A reaches Ann on node B.
    a.sdk().trigger("#server-to-user-ann", "hello", {"to": "ann"})
    assert json.loads(ann.expect("hello", "#server-to-user-ann")["data"]) == {"to": "ann"}

    # terminate_connections served by node A closes Ann's socket on node B.
    a.sdk().terminate_user_connections("ann")
    error = ann.expect("pusher:error")
    assert error["data"]["code"] == 4009
    assert ann.expect_close()[0] == 4009
    offline = watcher.expect("pusher_internal:watchlist_events")
    assert offline["data"] == {"events": [{"name": "offline", "user_ids": ["ann"]}]}


def test_cache_channel_last_event_is_shared(nodes):
    a, b = nodes(2)
    a.sdk().trigger("cache-prices", "price", {"eur": 3})
    client = b.ws()
    client.subscribe("cache-prices")
    cached = client.expect("price", "cache-prices")
    assert json.loads(cached["data"]) == {"eur": 3}
    info = b.sdk().channel_info("cache-prices", ["cache"])
    assert json.loads(info["cache"]["data"]) == {"eur": 3}
    assert info["cache"]["ttl"] > 0


def test_messages_after_a_subscribe_wait_for_it(nodes):
    # Client events and pings are handled at once when nothing waits before them; sent right
    # behind a subscribe (which waits for Redis), they must still come after it, in order.
    a, b = nodes(2)
    peer = b.ws()
    assert peer.socket_id is not None
    peer.subscribe("private-chat", private_auth(peer.socket_id, "private-chat"))
    sender = a.ws()
    assert sender.socket_id is not None
    messages = [
        {
            "event": "pusher:subscribe",
            "data": {
                "channel": "private-chat",
                "auth": private_auth(sender.socket_id, "private-chat"),
            },
        },
        {"event": "client-typing", "data": {"n": 1}, "channel": "private-chat"},
        {"event": "pusher:ping", "data": {}},
    ]
    # One write: the three arrive together, while the subscribe waits for Redis.
    sender.send_wire(
        b"".join(
            websocket.ABNF.create_frame(json.dumps(m), websocket.ABNF.OPCODE_TEXT).format()
            for m in messages
        )
    )
    assert sender.recv()["event"] == "pusher_internal:subscription_succeeded"
    assert sender.recv()["event"] == "pusher:pong"  # no error: the client event was accepted
    assert peer.expect("client-typing", "private-chat")["data"] == {"n": 1}
    peer.sync()
