"""RedisWebhookStore against a real redis-server: two stores in this process play two nodes.

Each store has its own RedisLink (its probe greenlet says when Redis answers), as each node
has. The grace keys, lanes and events are what `ipe.webhooks` hands a store.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import gevent
import pytest
from support import RedisServer

from ipe.config import AppConfig, RedisConfig, WebhookTarget
from ipe.redis.link import RedisLink
from ipe.redis.webhook_store import RedisWebhookStore
from ipe.webhook_store import Arrival, Batch

APPS = (
    AppConfig(
        "1001",
        "key",
        "secret",
        webhooks=(WebhookTarget("http://127.0.0.1:9/a"), WebhookTarget("http://127.0.0.1:9/b")),
    ),
)
KEY = "member\0presence-room\0ann"
REMOVED = {"name": "member_removed", "channel": "presence-room", "user_id": "ann"}
ADDED = {"name": "member_added", "channel": "presence-room", "user_id": "ann"}
GRACE = 3.0


def wait_for(predicate: Callable[[], object], timeout: float = 10.0) -> object:
    """Poll `predicate`, letting the links' probe greenlets run; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        gevent.sleep(0.02)


@pytest.fixture
def node(redis_server: RedisServer) -> Iterator[Callable[..., RedisWebhookStore]]:
    """Make a store as node `name` would (`node_timeout` is its batches' lease)."""
    links: list[RedisLink] = []

    def make(name: str, node_timeout: float = 15.0) -> RedisWebhookStore:
        config = RedisConfig(
            port=redis_server.port, timeout=1, heartbeat_interval=0.1, node_timeout=node_timeout
        )
        link = RedisLink(config, name)
        links.append(link)
        link.start()
        wait_for(lambda: link.up)
        return RedisWebhookStore(link, APPS)

    yield make
    for link in links:
        link.stop()


def held(at: float, lanes: tuple[str, ...] = ("1001/0",)) -> Arrival:
    return Arrival(REMOVED, lanes, at, KEY, held=True, until=at + GRACE)


def returned(at: float, lanes: tuple[str, ...] = ("1001/0",)) -> Arrival:
    return Arrival(ADDED, lanes, at, KEY, held=False, until=at + GRACE)


def occupied(channel: str, at: float) -> Arrival:
    return Arrival({"name": "channel_occupied", "channel": channel}, ("1001/0",), at)


def sent(store: RedisWebhookStore, lane: str = "1001/0") -> list[dict]:
    """Everything queued on a lane, taken and finished by `store`."""
    store.release(time.time())
    events: list[dict] = []
    while (batch := store.take(lane, 100, time.time())) is not None:
        events.extend(batch.events)
        store.finish(batch)
    return events


def test_a_return_on_another_node_cancels_the_held_event(node):
    a, b = node("a"), node("b")
    now = time.time()
    a.accept("1001", [held(now)])
    a.release(now)
    assert a.size() == 1
    b.accept("1001", [returned(now + 0.5)])
    b.release(now + 0.5)
    for store in (a, b):
        store.release(now + GRACE + 1)  # long after the grace period
    assert sent(a) == [] and sent(b) == []
    assert a.size() == 0 and b.size() == 0


def test_a_return_written_before_its_held_event_drops_it(node):
    a, b = node("a"), node("b")
    now = time.time()
    # Ann left on A, then came back on B; B wrote first (A's scheduler was slower).
    b.accept("1001", [returned(now + 0.1)])
    b.release(now + 0.1)
    a.accept("1001", [held(now)])
    a.release(now + 0.2)
    a.release(now + GRACE + 1)
    assert sent(a) == [ADDED]  # the return was sent already: no member_removed after it


def test_a_leave_after_a_return_is_held_and_sent(node):
    a, b = node("a"), node("b")
    now = time.time()
    b.accept("1001", [returned(now)])  # ann joins on B: nothing held, so it is sent
    b.release(now)
    a.accept("1001", [held(now + 1)])  # and leaves on A a second later, for good
    a.release(now + 1)
    assert sent(b) == [ADDED]
    assert a.next_release() == pytest.approx(now + 1 + GRACE)
    b.release(now + 2 + GRACE)  # any node releases it, once
    a.release(now + 2 + GRACE)
    assert sent(a) == [REMOVED]


def test_held_events_go_to_every_lane_they_were_routed_to_once(node):
    a, b = node("a"), node("b")
    now = time.time()
    a.accept("1001", [held(now - GRACE - 1, lanes=("1001/0", "1001/1"))])  # due already
    for _ in range(3):
        b.release(now)
        a.release(now)
    assert sent(a, "1001/0") == [REMOVED]
    assert sent(b, "1001/1") == [REMOVED]


def test_one_sender_per_lane_and_batches_in_order(node):
    a, b = node("a"), node("b")
    now = time.time()
    a.accept("1001", [occupied(f"c{i}", now) for i in range(5)])
    a.release(now)
    b.release(now + b.poll)  # B looks at every app on its first pass
    assert a.waiting() == b.waiting() == {"1001/0": (5, pytest.approx(now))}
    first = a.take("1001/0", 3, now)
    assert first is not None and [e["channel"] for e in first.events] == ["c0", "c1", "c2"]
    assert b.take("1001/0", 3, now) is None  # A sends this lane until its batch is done
    b.release(now)
    assert b.waiting() == {}
    assert b.unfinished() == []  # A's lease is alive
    a.finish(first)
    b.release(now)
    rest = b.take("1001/0", 3, now)
    assert rest is not None and [e["channel"] for e in rest.events] == ["c3", "c4"]


def test_a_dead_nodes_batch_is_resumed_when_its_lease_expires(node):
    a = node("a", node_timeout=0.5)
    b = node("b", node_timeout=0.5)
    now = time.time()
    a.accept("1001", [occupied("c1", now)])
    a.release(now)
    batch = a.take("1001/0", 20, now)
    assert batch is not None
    # A dies here: it never renews its lease nor finishes the batch.

    def adopted() -> list[Batch]:
        b.release(time.time())
        return b.unfinished()

    [resumed] = wait_for(adopted)
    # The very same request: same events and time_ms, so the same signed body.
    assert (resumed.events, resumed.created_ms, resumed.token) == (
        batch.events,
        batch.created_ms,
        batch.token,
    )
    assert b.owns(resumed)
    # A was not dead after all: its next renewal finds the batch taken over, and it stops.
    a.release(time.time() + 1)
    assert not a.owns(batch)
    b.finish(resumed)
    assert sent(b) == []


def test_a_node_restarted_under_its_id_resumes_at_once(node):
    a = node("node-1.1")
    now = time.time()
    a.accept("1001", [occupied("c1", now)])
    a.release(now)
    batch = a.take("1001/0", 20, now)
    assert batch is not None
    again = node("node-1.1")  # a new process (pid 1 in a container), before the lease expires
    again.release(time.time())
    [resumed] = again.unfinished()
    assert resumed.token == batch.token


def test_an_abandoned_batch_is_resumed_at_once(node):
    a, b = node("a"), node("b")
    now = time.time()
    a.accept("1001", [occupied("c1", now)])
    a.release(now)
    batch = a.take("1001/0", 20, now)
    assert batch is not None
    a.close()  # shutdown: the lease goes back
    b.release(now + b.poll)
    [resumed] = b.unfinished()
    assert resumed.events == batch.events
    assert a.unfinished() == []  # A gave it away


def test_cache_miss_is_deduplicated_across_nodes(node):
    a, b = node("a"), node("b")
    now = time.time()
    miss = Arrival({"name": "cache_miss", "channel": "cache-x"}, ("1001/0",), now, dedupe="x")
    a.accept("1001", [miss])
    b.accept("1001", [miss])
    a.release(now)
    b.release(now)
    assert sent(a) == [{"name": "cache_miss", "channel": "cache-x"}]
