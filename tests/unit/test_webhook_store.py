"""The in-process webhook store: grace holds and cancels, lanes, batches, its size bound."""

from __future__ import annotations

import pytest

from ipe.webhook_store import InMemoryWebhookStore

REMOVED = {"name": "member_removed", "channel": "presence-a", "user_id": "1"}
VACATED = {"name": "channel_vacated", "channel": "presence-a"}


def occupied(channel: str) -> dict[str, str]:
    return {"name": "channel_occupied", "channel": channel}


def test_held_events_are_released_when_due_in_due_order():
    store = InMemoryWebhookStore()
    store.hold("1", "late", VACATED, due=20.0)
    store.hold("1", "early", REMOVED, due=10.0)
    assert store.size() == 2
    assert store.next_release() == 10.0
    assert store.release(9.9) == []
    assert store.release(20.0) == [("1", REMOVED), ("1", VACATED)]
    assert store.size() == 0
    assert store.next_release() is None


def test_a_cancelled_hold_is_never_released():
    store = InMemoryWebhookStore()
    store.hold("1", "k", REMOVED, due=10.0)
    assert store.cancel("2", "k") is False  # keys are per app
    assert store.cancel("1", "k") is True
    assert store.cancel("1", "k") is False
    assert store.next_release() is None
    assert store.release(99.0) == []
    assert store.size() == 0


def test_holding_a_key_again_keeps_one_event_at_the_new_time():
    store = InMemoryWebhookStore()
    store.hold("1", "k", REMOVED, due=10.0)
    store.hold("1", "k", REMOVED, due=15.0)
    assert store.size() == 1
    assert store.release(12.0) == []
    assert store.release(15.0) == [("1", REMOVED)]


def test_lanes_batch_in_order_up_to_the_limit_one_batch_in_flight():
    store = InMemoryWebhookStore()
    for i in range(5):
        store.enqueue("1/0", occupied(f"c{i}"), now=100.0 + i)
    assert store.waiting() == {"1/0": (5, 100.0)}
    batch = store.take("1/0", limit=3, now=200.5)
    assert [e["channel"] for e in batch.events] == ["c0", "c1", "c2"]
    assert batch.created_ms == 200500
    assert store.waiting() == {}  # a batch is in flight: the lane waits for it
    with pytest.raises(RuntimeError):
        store.take("1/0", limit=3, now=201.0)
    assert store.size() == 5
    store.finish(batch)
    assert store.size() == 2
    assert store.waiting() == {"1/0": (2, 103.0)}
    rest = store.take("1/0", limit=3, now=202.0)
    assert [e["channel"] for e in rest.events] == ["c3", "c4"]
    store.finish(rest)
    store.finish(rest)  # finishing twice changes nothing
    assert store.size() == 0
    assert store.waiting() == {}


def test_a_dedupe_key_keeps_one_waiting_copy():
    store = InMemoryWebhookStore()
    miss = {"name": "cache_miss", "channel": "cache-a"}
    assert store.enqueue("1/0", miss, 1.0, dedupe="a") is True
    assert store.enqueue("1/0", miss, 2.0, dedupe="a") is False
    assert store.enqueue("1/1", miss, 2.0, dedupe="a") is True  # per lane
    batch = store.take("1/0", limit=10, now=3.0)
    assert len(batch.events) == 1
    # Once taken, a new miss for the same channel is a new event.
    assert store.enqueue("1/0", miss, 4.0, dedupe="a") is True
