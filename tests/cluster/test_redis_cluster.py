"""A Redis Cluster of three masters: delivery, presence and webhooks across nodes, sharded
Pub/Sub."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest
import redis
from support import (
    REDIS_CLI,
    IpeServer,
    Receiver,
    RedisServer,
    join,
    presence_auth,
    redis_config,
    rest_users,
    roster,
    settle,
    wait_ready,
    wait_until,
)
from support.observe import joins_at_once_heard_once

ROOM = "presence-room"


@pytest.fixture
def redis_cluster(make_redis: Callable[..., RedisServer]) -> list[RedisServer]:
    """Three masters, every slot covered, created with `redis-cli --cluster create`."""
    servers = [
        make_redis("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
        for _ in range(3)
    ]
    subprocess.run(
        [REDIS_CLI, "--cluster", "create"]
        + [f"127.0.0.1:{s.port}" for s in servers]
        + ["--cluster-replicas", "0", "--cluster-yes"],
        check=True,
        capture_output=True,
        timeout=60,
    )

    def ok() -> bool:
        for server in servers:
            if server.client().cluster("info").get("cluster_state") != "ok":
                return False
        return True

    wait_until(ok, 30, 0.1, "the cluster to be ok")
    return servers


def test_delivery_and_presence_on_a_redis_cluster(
    redis_cluster: list[RedisServer], make_server: Callable[..., IpeServer]
):
    addrs = ",".join(f"127.0.0.1:{s.port}" for s in redis_cluster)
    # IPÊ's variables; the file only shortens the intervals.
    env = {"REDIS_CLUSTER_MODE": "true", "REDIS_ADDRS": addrs}
    hook = Receiver()
    config = redis_config()
    config["apps"][0]["webhooks"] = [{"url": hook.url}]
    config["webhooks"] = {"batch_window": 0.05, "grace_period": 0.5}
    a, b = (make_server(config, name=f"node{i}", env=env) for i in range(2))
    for server in (a, b):
        wait_ready(server)

    client = a.ws()
    client.subscribe("orders")
    excluded = b.ws()
    excluded.subscribe("orders")
    b.sdk().trigger("orders", "update", "1", socket_id=excluded.socket_id)
    assert client.expect("update", "orders")["data"] == "1"
    a.sdk().trigger("orders", "update", "2")
    assert client.expect("update", "orders")["data"] == "2"
    assert excluded.expect("update", "orders")["data"] == "2"

    ann = join(a, ROOM, "ann", {"name": "Ann"})
    settle(a, b)
    bob = b.ws()
    auth, data = presence_auth(bob.socket_id, ROOM, "bob")
    assert roster(bob.subscribe(ROOM, auth, data))["hash"] == {"ann": {"name": "Ann"}, "bob": None}
    added = ann.expect("pusher_internal:member_added", ROOM)
    assert json.loads(added["data"]) == {"user_id": "bob"}
    for server in (a, b):
        assert rest_users(server, ROOM) == {"ann", "bob"}
        assert server.sdk().channel_info("orders", ["subscription_count"]) == {
            "occupied": True,
            "subscription_count": 2,
        }
    bob.close()
    removed = ann.expect("pusher_internal:member_removed", ROOM)
    assert json.loads(removed["data"]) == {"user_id": "bob"}
    for c in (client, excluded, ann):
        c.sync()
    # Webhooks wait in the app's slot: held, released and sent once, whichever node left.
    try:
        hook.wait_event("member_removed", timeout=15, user_id="bob")
        assert [e["name"] for e in hook.events(user_id="bob")] == ["member_added", "member_removed"]
        assert len(hook.events("channel_occupied", channel="orders")) == 1
    finally:
        hook.close()

    # Sharded Pub/Sub: the app's channel is a shard channel on the master owning its slot.
    cluster = redis.RedisCluster(host="127.0.0.1", port=redis_cluster[0].port)
    try:
        owner = cluster.get_node_from_key("ipe:app:1001")
        shard = redis.Redis(host=owner.host, port=owner.port)
        assert b"ipe:app:1001" in shard.execute_command("PUBSUB SHARDCHANNELS")
        assert shard.pubsub_shardnumsub("ipe:app:1001") == [(b"ipe:app:1001", 2)]
    finally:
        cluster.close()


def test_a_burst_of_joins_on_a_redis_cluster_is_exact(
    redis_cluster: list[RedisServer], make_server: Callable[..., IpeServer]
):
    """Joins sent back to back go to Redis together (one pipeline per round trip, routed by
    slot on a Cluster): every socket still hears of every other member exactly once."""
    addrs = ",".join(f"127.0.0.1:{s.port}" for s in redis_cluster)
    env = {"REDIS_CLUSTER_MODE": "true", "REDIS_ADDRS": addrs}
    a, b = (make_server(redis_config(), name=f"node{i}", env=env) for i in range(2))
    for server in (a, b):
        wait_ready(server)
    joins_at_once_heard_once(a, b, ROOM)


def test_a_publish_that_timed_out_on_a_paused_master_is_never_sent_twice(
    redis_cluster: list[RedisServer], make_server: Callable[..., IpeServer]
):
    """A PUBLISH that timed out may still be in the paused master's input buffer: sent again
    (a Cluster client's retries), it would be published twice once the master resumes. ipe
    publishes through a client without retries; the publish lost in the pause is counted.

    (redis-py 8.1 happens to drop the node's pooled connections after a timeout, and a new
    connection's handshake times out as well, so its retry does not get through either: this
    guards the rule, whatever the client does.)"""
    addrs = ",".join(f"127.0.0.1:{s.port}" for s in redis_cluster)
    env = {"REDIS_CLUSTER_MODE": "true", "REDIS_ADDRS": addrs}
    # Pooled connections are not PINGed before use: a retry would write straight into one.
    config = redis_config(health_check_interval=60)
    a, b = (make_server(config, name=f"node{i}", env=env) for i in range(2))
    for server in (a, b):
        wait_ready(server)
    cluster = redis.RedisCluster(host="127.0.0.1", port=redis_cluster[0].port)
    try:
        owner = cluster.get_node_from_key("ipe:c:1001:ticks")  # the channel's Pub/Sub topic
    finally:
        cluster.close()
    master = next(s for s in redis_cluster if s.port == owner.port)
    far = b.ws()
    far.subscribe("ticks")
    settle(a, b)
    master.pause()  # SIGSTOP: the PUBLISH waits unread in its buffer, and times out
    try:
        a.sdk().trigger("ticks", "stalled", {})
        wait_until(
            lambda: a.metric("ipe_broker_publish_failures_total") >= 1,
            15,
            0.1,
            "the publish to time out and be counted",
        )
    finally:
        master.resume()
    for server in (a, b):
        wait_ready(server)
    settle(a, b)
    a.sdk().trigger("ticks", "after", {})
    seen = []
    while "after" not in seen:
        message = far.recv(timeout=10)
        if message.get("channel") == "ticks":
            seen.append(message["event"])
    far.sync()
    assert seen.count("stalled") <= 1, f"an event arrived twice: {seen}"
