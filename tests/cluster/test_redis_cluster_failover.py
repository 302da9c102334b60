"""A Redis Cluster of three masters and three replicas loses a master (SIGKILL): both ipe
nodes keep delivering, with Pub/Sub routed by interest over every shard."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import pytest
import redis
from cluster_support import (
    FIXTURES,
    REDIS_CLI,
    RedisServer,
    join,
    redis_config,
    rest_users,
    settle,
    wait_ready,
)
from conftest import wait_until
from support.observe import crosses, frames_until_pong, members_come_and_go_once

make_redis, redis_server, nodes = FIXTURES

ROOM = "presence-room"
RESUME = 15.0  # the bound: delivery back on both nodes within this after the kill


@pytest.fixture
def cluster6(make_redis: Callable[..., RedisServer]) -> list[RedisServer]:
    """Three masters with a replica each; a dead master is replaced after about 2 s."""
    servers = [
        make_redis(
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
            "--cluster-replica-validity-factor",
            "0",
        )
        for _ in range(6)
    ]
    subprocess.run(
        [REDIS_CLI, "--cluster", "create"]
        + [f"127.0.0.1:{s.port}" for s in servers]
        + ["--cluster-replicas", "1", "--cluster-yes"],
        check=True,
        capture_output=True,
        timeout=60,
    )

    def ok() -> bool:
        for server in servers:
            info = server.client().cluster("info")
            if info.get("cluster_state") != "ok" or int(info["cluster_known_nodes"]) != 6:
                return False
            replication = server.client().info("replication")
            if replication["role"] == "slave" and replication["master_link_status"] != "up":
                return False  # a replica that never synced cannot take over
        return True

    wait_until(ok, 30, 0.1, "the cluster to be ok")
    return servers


def _owner(cluster: redis.RedisCluster, key: str) -> int:
    return int(cluster.get_node_from_key(key).port)




def test_master_killed_under_two_nodes(cluster6, make_server):
    seed = cluster6[0]
    cluster = redis.RedisCluster(host="127.0.0.1", port=seed.port)
    try:
        # The victim owns the app's state (presence) and the topic of channel `doomed`.
        victim_port = _owner(cluster, "{ipe:1001}:subs")
        doomed = next(
            f"doomed-{i}"
            for i in range(10000)
            if _owner(cluster, f"ipe:c:1001:doomed-{i}") == victim_port
        )
        masters = {int(n.port) for n in cluster.get_primaries()}
    finally:
        cluster.close()
    addrs = ",".join(f"127.0.0.1:{s.port}" for s in cluster6)
    env = {"REDIS_CLUSTER_MODE": "true", "REDIS_ADDRS": addrs}
    a, b = (make_server(redis_config(), name=f"node{i}", env=env) for i in range(2))
    for server in (a, b):
        wait_ready(server)

    watcher = join(a, ROOM, "watcher")
    settle(a, b)
    ann = join(b, ROOM, "ann")
    watcher.expect("pusher_internal:member_added", ROOM)
    to_a, to_b = a.ws(), b.ws()
    to_a.subscribe(doomed)
    to_b.subscribe(doomed)
    spread = b.ws()
    for i in range(30):
        spread.subscribe(f"spread-{i}")
    a.sdk().trigger(doomed, "before", {})
    to_b.expect("before", doomed)

    # Interest routing over sharded Pub/Sub: B's topics sit on every master.
    for port in masters:
        shard = redis.Redis(host="127.0.0.1", port=port)
        assert shard.execute_command("PUBSUB SHARDCHANNELS", "ipe:c:1001:spread-*"), port

    victim = next(s for s in cluster6 if s.port == victim_port)
    victim.kill()
    killed = time.monotonic()
    crosses(a, to_b, doomed, killed + RESUME)
    crosses(b, to_a, doomed, killed + RESUME)
    for server in (a, b):
        wait_ready(server)

    for server in (a, b):
        wait_until(lambda s=server: rest_users(s, ROOM) == {"watcher", "ann"}, 15)
        info = server.sdk().channel_info(doomed, ["subscription_count"])
        assert info == {"occupied": True, "subscription_count": 2}
    settle(a, b)
    frames = [f for f in frames_until_pong(watcher) if f["channel"] == ROOM]
    assert frames == []  # no member event repeated (or invented) by the failover
    members_come_and_go_once(watcher, b, ROOM, ann)
