"""Quotas are the cluster's: two ipe nodes sharing a real redis-server count together.

Connections per app (a dead node's share is reaped by the janitor), REST event and read
rates per second, and the presence member limit under concurrent joins on both nodes.
"""

from __future__ import annotations

import threading
from typing import Any

import pusher
import pusher.errors
import pytest
from cluster_support import FAST, FIXTURES, presence_auth, rest_users, wait_ready
from conftest import IpeServer, WsClient, config_with, wait_until

make_redis, redis_server, nodes = FIXTURES

QUOTA_APP = {
    "name": "Quota",
    "app_id": "2001",
    "key": "quota-key",
    "secret": "quota-secret",
    "limits": {
        "max_connections": 4,
        "max_backend_events_per_second": 5,
        "max_read_requests_per_second": 3,
    },
}
CREDENTIALS = {"key": "quota-key", "secret": "quota-secret"}


@pytest.fixture
def pair(redis_server, make_server) -> list[IpeServer]:
    config = config_with(redis={**FAST, "url": redis_server.url})
    config["apps"].append(QUOTA_APP)
    config["apps"][0]["limits"] = {"max_presence_members": 5}
    servers = [make_server(config, name=f"node{i}") for i in range(2)]
    for server in servers:
        wait_ready(server)
    return servers


def connect(server: IpeServer) -> WsClient:
    url = f"ws://127.0.0.1:{server.port}/app/quota-key?protocol=7&client=js&version=8.6.0"
    client = WsClient(url)
    server.clients.append(client)
    return client


def over_quota(client: WsClient) -> bool:
    if client.socket_id is not None:
        return False
    assert client.first["event"] == "pusher:error" and client.first["data"]["code"] == 4004
    assert client.expect_close()[0] == 4004
    return True


def test_max_connections_counts_both_nodes(pair):
    a, b = pair
    on_a = [connect(a) for _ in range(2)]
    on_b = [connect(b) for _ in range(2)]
    assert all(c.socket_id for c in on_a + on_b)
    assert over_quota(connect(a))
    assert over_quota(connect(b))
    # Other apps connect as usual on both nodes.
    assert a.ws().socket_id and b.ws().socket_id
    # A close on one node frees a slot for the other.
    on_a[0].close()
    wait_until(lambda: connect(b).socket_id is not None, 5, message="a slot freed on node0")


def test_a_dead_nodes_connections_are_reaped(pair):
    a, b = pair
    for _ in range(3):
        assert connect(a).socket_id
    assert connect(b).socket_id
    assert over_quota(connect(b))
    a.kill()  # no chance to release anything: the janitor must reap its share
    # node_timeout is 3 s; the janitor of node1 then removes node0's three connections.
    wait_until(lambda: all(connect(b).socket_id for _ in range(1)), 15, 0.5, "node0's share reaped")
    # Exactly three slots came back (one of them just taken above): two more, then refusal.
    assert connect(b).socket_id and connect(b).socket_id
    assert over_quota(connect(b))


def status(call: Any, *args: Any) -> int:
    """The HTTP status an official Python SDK call got (it raises on anything but 200)."""
    try:
        call(*args)
    except pusher.errors.PusherBadStatus as exc:
        code, _, body = str(exc).partition(": ")
        assert code != "429" or "max_" in body, body
        return int(code)
    return 200


def quota_sdk(server: IpeServer) -> pusher.Pusher:
    return server.sdk(app_id="2001", **CREDENTIALS)


def test_backend_event_rate_is_the_clusters(pair):
    a, b = pair
    channels = [f"c{i}" for i in range(5)]

    def attempt() -> bool:
        # Node0 uses the whole of a fresh second's quota; node1, right after, must refuse.
        # A second boundary in between lets node1 through: then try again.
        if status(quota_sdk(a).trigger, channels, "e", {}) != 200:
            return False
        return status(quota_sdk(b).trigger, "c0", "e", {}) == 429

    wait_until(attempt, 10, 0.2, "429 on node1 after node0 used the quota")
    # Another app publishes freely on both nodes meanwhile.
    assert a.sdk().trigger("news", "e", {}) == {} and b.sdk().trigger("news", "e", {}) == {}


def test_read_rate_is_the_clusters(pair):
    a, b = pair

    def attempt() -> bool:
        # As above: three reads of a fresh second on node0, then one on node1.
        if any(status(quota_sdk(a).channels_info) != 200 for _ in range(3)):
            return False
        return status(quota_sdk(b).channels_info) == 429

    wait_until(attempt, 10, 0.2, "a read refused on node1 after three on node0")
    assert b.sdk().channels_info() == {"channels": {}}


def test_presence_member_limit_holds_under_concurrent_joins_on_both_nodes(pair):
    a, b = pair
    room = "presence-crowded"
    clients = [(a if i % 2 else b).ws() for i in range(16)]
    barrier = threading.Barrier(len(clients))
    replies: list[dict[str, Any]] = [{} for _ in clients]

    def join(i: int) -> None:
        client = clients[i]
        auth, data = presence_auth(client.socket_id, room, f"user{i}")
        barrier.wait(5)
        client.send("pusher:subscribe", {"channel": room, "auth": auth, "channel_data": data})
        replies[i] = client.recv(10)

    threads = [threading.Thread(target=join, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    events = [r.get("event") for r in replies]
    assert events.count("pusher_internal:subscription_succeeded") == 5, events
    assert events.count("pusher:subscription_error") == 11, events
    for reply in replies:
        if reply["event"] == "pusher:subscription_error":
            assert (reply["data"]["type"], reply["data"]["status"]) == ("LimitReached", 4100)
    assert len(rest_users(a, room)) == 5
    assert len(rest_users(b, room)) == 5


def test_connection_counts_are_written_back_after_redis_lost_them(pair, redis_server):
    a, b = pair
    held = [connect(a), connect(a), connect(b), connect(b)]
    assert all(c.socket_id for c in held)
    redis_server.restart()  # no persistence: the counts are gone
    for server in pair:
        wait_ready(server)

    def restored() -> bool:
        counts = redis_server.client().hvals("{ipe:2001}:conns")
        return sum(int(n) for n in counts) == 4

    wait_until(restored, 15, 0.1, "both nodes' connection counts written back")
    assert over_quota(connect(a))
    assert over_quota(connect(b))
    for client in held:
        client.sync()  # still served
