"""The in-process webhook store: grace holds and cancels, lanes, batches, its size bound."""

from __future__ import annotations

from ipe.webhook_store import Arrival, InMemoryWebhookStore

REMOVED = {"name": "member_removed", "channel": "presence-a", "user_id": "1"}
ADDED = {"name": "member_added", "channel": "presence-a", "user_id": "1"}
VACATED = {"name": "channel_vacated", "channel": "presence-a"}
LANE = ("1/0",)


def occupied(channel: str) -> dict[str, str]:
    return {"name": "channel_occupied", "channel": channel}


def held(event: dict, key: str, due: float, lanes: tuple[str, ...] = LANE) -> Arrival:
    return Arrival(event, lanes, due - 3, key, held=True, until=due)


def returned(event: dict, key: str, at: float, lanes: tuple[str, ...] = LANE) -> Arrival:
    return Arrival(event, lanes, at, key, held=False, until=at + 3)


def plain(event: dict, at: float, lanes: tuple[str, ...] = LANE, dedupe=None) -> Arrival:
    return Arrival(event, lanes, at, dedupe=dedupe)


def queued(store: InMemoryWebhookStore, lane: str = "1/0") -> list[dict]:
    batch = store.take(lane, limit=100, now=1000.0)
    if batch is None:
        return []
    store.finish(batch)
    return list(batch.events)


def test_held_events_go_to_their_lanes_when_due_in_due_order():
    store = InMemoryWebhookStore()
    store.accept("1", [held(VACATED, "late", due=20.0), held(REMOVED, "early", due=10.0)])
    assert store.size() == 2
    assert store.next_release() == 10.0
    store.release(9.9)
    assert store.waiting() == {}
    store.release(20.0)
    assert store.waiting() == {"1/0": (2, 10.0)}
    assert queued(store) == [REMOVED, VACATED]
    assert store.size() == 0
    assert store.next_release() is None


def test_a_return_cancels_the_held_event_and_is_dropped_too():
    store = InMemoryWebhookStore()
    store.accept("1", [held(REMOVED, "k", due=10.0)])
    store.accept("2", [returned(ADDED, "k", at=8.0)])  # keys are per app: app 2 queues it
    assert store.waiting() == {"1/0": (1, 8.0)}
    assert queued(store) == [ADDED]
    store.accept("1", [returned(ADDED, "k", at=8.0)])
    assert store.next_release() is None
    store.release(99.0)
    assert store.waiting() == {}
    assert store.size() == 0
    # Once nothing is held, a return is an ordinary event.
    store.accept("1", [returned(ADDED, "k", at=100.0)])
    assert queued(store) == [ADDED]


def test_a_held_event_without_lanes_still_cancels_as_a_pair():
    store = InMemoryWebhookStore()
    store.accept("1", [held(REMOVED, "k", due=10.0, lanes=()), returned(ADDED, "k", 8.0)])
    store.release(99.0)
    assert store.size() == 0
    assert store.waiting() == {}


def test_holding_a_key_again_keeps_one_event_at_the_new_time():
    store = InMemoryWebhookStore()
    store.accept("1", [held(REMOVED, "k", due=10.0), held(REMOVED, "k", due=15.0)])
    assert store.size() == 1
    store.release(12.0)
    assert store.waiting() == {}
    store.release(15.0)
    assert queued(store) == [REMOVED]


def test_lanes_batch_in_order_up_to_the_limit_one_batch_in_flight():
    store = InMemoryWebhookStore()
    store.accept("1", [plain(occupied(f"c{i}"), at=100.0 + i) for i in range(5)])
    assert store.waiting() == {"1/0": (5, 100.0)}
    batch = store.take("1/0", limit=3, now=200.5)
    assert batch is not None
    assert [e["channel"] for e in batch.events] == ["c0", "c1", "c2"]
    assert batch.created_ms == 200500
    assert store.waiting() == {}  # a batch is in flight: the lane waits for it
    assert store.take("1/0", limit=3, now=201.0) is None
    assert store.size() == 5
    assert store.owns(batch)
    store.finish(batch)
    assert store.size() == 2
    assert store.waiting() == {"1/0": (2, 103.0)}
    rest = store.take("1/0", limit=3, now=202.0)
    assert rest is not None
    assert [e["channel"] for e in rest.events] == ["c3", "c4"]
    store.finish(rest)
    store.finish(rest)  # finishing twice changes nothing
    assert store.size() == 0
    assert store.waiting() == {}
    assert store.take("1/0", limit=3, now=203.0) is None


def test_an_event_goes_to_each_of_its_lanes():
    store = InMemoryWebhookStore()
    store.accept("1", [plain(occupied("a"), 1.0, lanes=("1/0", "1/2"))])
    assert store.waiting() == {"1/0": (1, 1.0), "1/2": (1, 1.0)}
    assert store.size() == 2


def test_a_dedupe_key_keeps_one_waiting_copy():
    store = InMemoryWebhookStore()
    miss = {"name": "cache_miss", "channel": "cache-a"}
    store.accept("1", [plain(miss, 1.0, dedupe="a"), plain(miss, 2.0, dedupe="a")])
    store.accept("1", [plain(miss, 2.0, lanes=("1/1",), dedupe="a")])  # per lane
    assert store.waiting() == {"1/0": (1, 1.0), "1/1": (1, 2.0)}
    batch = store.take("1/0", limit=10, now=3.0)
    assert batch is not None and len(batch.events) == 1
    # Once taken, a new miss for the same channel is a new event.
    store.accept("1", [plain(miss, 4.0, dedupe="a")])
    store.finish(batch)
    assert store.waiting()["1/0"] == (1, 4.0)


def test_nothing_survives_the_process():
    store = InMemoryWebhookStore()
    store.accept("1", [held(REMOVED, "k", due=10.0), plain(occupied("a"), 1.0)])
    assert store.durable is False
    assert store.unsaved() == store.size() == 2
    assert store.unfinished() == []
