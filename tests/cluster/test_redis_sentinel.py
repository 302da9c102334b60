"""Redis Sentinel: a master, a replica and three `redis-server --sentinel` processes; two ipe
nodes follow the master through a failover (the master killed with SIGKILL)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from cluster_support import (
    FAST,
    FIXTURES,
    REDIS_SERVER,
    RedisServer,
    free_low_port,
    join,
    ready_status,
    rest_users,
    settle,
    wait_ready,
)
from conftest import config_with, wait_until
from support.observe import crosses, frames_until_pong, members_come_and_go_once

make_redis, redis_server, nodes = FIXTURES

ROOM = "presence-room"
MASTER = "mymaster"
RESUME = 15.0  # the bound: delivery back on both nodes within this after the kill


class Sentinel:
    """One `redis-server --sentinel` process watching MASTER."""

    def __init__(self, workdir: Path, name: str, master_port: int) -> None:
        self.port = free_low_port()
        self.dir = workdir / name
        self.dir.mkdir()
        self.conf = self.dir / "sentinel.conf"
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 5000\n"
        )
        log = open(self.dir / "sentinel.log", "ab")
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [REDIS_SERVER, str(self.conf), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        wait_until(self._answers, 10, 0.05, f"sentinel on port {self.port}")

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def _answers(self) -> bool:
        assert self.proc.poll() is None, "redis-server --sentinel exited"
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def master(self) -> dict:
        return self.client().sentinel_master(MASTER)  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def sentinels(tmp_path: Path, make_redis: Callable[..., RedisServer]):
    """(master, replica, [three Sentinels]), the Sentinels agreed on both servers."""
    master = make_redis()
    replica = make_redis("--replicaof", "127.0.0.1", str(master.port))
    wait_until(
        lambda: b"master_link_status:up" in replica.client().execute_command("INFO replication"),
        15,
        message="the replica to sync",
    )
    group = [Sentinel(tmp_path, f"sentinel{i}", master.port) for i in range(3)]
    for sentinel in group:
        wait_until(
            lambda s=sentinel: (
                s.master()["num-slaves"] == 1 and s.master()["num-other-sentinels"] == 2
            ),
            20,
            message="the Sentinels to find each other and the replica",
        )
    yield master, replica, group
    for sentinel in group:
        sentinel.stop()


def sentinel_config(group: list[Sentinel]) -> dict:
    addrs = [f"127.0.0.1:{s.port}" for s in group]
    return config_with(redis={**FAST, "sentinel": {"master": MASTER, "addrs": addrs}})




def test_two_nodes_follow_the_master_through_a_failover(sentinels, make_server):
    master, replica, group = sentinels
    a = make_server(sentinel_config(group), name="node0")
    b = make_server(sentinel_config(group), name="node1")
    for server in (a, b):
        wait_ready(server)
    watcher = join(a, ROOM, "watcher")
    settle(a, b)
    ann = join(b, ROOM, "ann")
    watcher.expect("pusher_internal:member_added", ROOM)
    to_a, to_b = a.ws(), b.ws()  # each hears the other node's publishes
    to_a.subscribe("from-b")
    to_b.subscribe("from-a")
    a.sdk().trigger("from-a", "before", {})
    to_b.expect("before", "from-a")

    master.kill()  # SIGKILL
    killed = time.monotonic()
    crosses(a, to_b, "from-a", killed + RESUME)
    crosses(b, to_a, "from-b", killed + RESUME)
    promoted = group[0].client().sentinel_get_master_addr_by_name(MASTER)
    assert int(promoted[1]) == replica.port
    for server in (a, b):
        wait_ready(server)  # /ready 200 again: the new master answers

    # Both nodes wrote their share back to the new master: rosters and counts agree.
    for server in (a, b):
        wait_until(lambda s=server: rest_users(s, ROOM) == {"watcher", "ann"}, 15)
        assert server.sdk().channel_info(ROOM, ["subscription_count"])["subscription_count"] == 2
    settle(a, b)
    assert frames_until_pong(watcher) == []  # no member event repeated by the failover
    members_come_and_go_once(watcher, b, ROOM, ann)
    for server in (a, b):
        wait_until(lambda s=server: rest_users(s, ROOM) == {"watcher"}, 15)


def test_ready_is_503_only_while_no_master_answers(sentinels, make_server):
    master, _replica, group = sentinels
    a = make_server(sentinel_config(group), name="node0")
    wait_ready(a)
    for sentinel in group:
        sentinel.client().execute_command(
            "SENTINEL", "SET", MASTER, "down-after-milliseconds", 60000
        )
    master.pause()  # no failover now: the Sentinels wait a minute
    try:
        wait_until(lambda: ready_status(a) == 503, 15, message="/ready to be 503")
    finally:
        master.resume()
    wait_ready(a)
