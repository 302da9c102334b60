"""Where webhook events wait: held for the grace period, queued per target, in flight. Pure.

`ipe.webhooks` decides *when* things happen (grace, batch window, retries, HTTP); a store only
keeps the state, so that a store kept in Redis can replace this in-process one: then pending
webhooks survive a restart, and a member who leaves on one node and comes back on another
cancels the held `member_removed` wherever it was held.

Terms: a *lane* is one (app, target) pair, named "<app_id>/<index of the target>"; it has a
queue of events waiting and at most one *batch* in flight. A *held* event waits for its grace
period under a key; `cancel(key)` takes it back before it is released.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

Event = dict[str, Any]


@dataclass(frozen=True)
class Batch:
    """The events of one webhook request and its creation time (the body's `time_ms`)."""

    lane: str
    events: tuple[Event, ...]
    created_ms: int


class WebhookStore(Protocol):
    """The interface every store implements; all times are Unix seconds."""

    durable: bool
    """True if what waits here outlives this process (then shutdown leaves it to others)."""

    def size(self) -> int:
        """Events waiting: held, queued and in flight (the bound of `queue_size`)."""
        ...

    def hold(self, app_id: str, key: str, event: Event, due: float) -> None:
        """Keep `event` under `key` until `due`, unless cancelled before."""
        ...

    def cancel(self, app_id: str, key: str) -> bool:
        """Drop the event held under `key`; True if there was one."""
        ...

    def release(self, now: float) -> list[tuple[str, Event]]:
        """Take every held event due at `now`, in due order, as (app_id, event)."""
        ...

    def next_release(self) -> float | None:
        """When the next held event falls due."""
        ...

    def enqueue(self, lane: str, event: Event, now: float, dedupe: str | None = None) -> bool:
        """Queue `event` on a lane; False if an event with the same `dedupe` key still waits."""
        ...

    def waiting(self) -> dict[str, tuple[int, float]]:
        """Lanes with queued events and no batch in flight → (count, enqueue time of the oldest)."""
        ...

    def take(self, lane: str, limit: int, now: float) -> Batch:
        """Move up to `limit` queued events of a lane into its batch in flight, created `now`."""
        ...

    def finish(self, batch: Batch) -> None:
        """Forget a batch in flight: delivered or given up."""
        ...

    def unfinished(self) -> list[Batch]:
        """Batches in flight that nobody is sending (after a restart; none in memory)."""
        ...


class InMemoryWebhookStore:
    """The single-process store: lost with the process, so shutdown flushes it."""

    durable = False

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], tuple[int, Event]] = {}
        self._due: list[tuple[float, int, str, str]] = []  # heap; stale entries skipped
        self._seq = itertools.count()
        self._queues: dict[str, deque[tuple[float, Event, str | None]]] = {}
        self._dedupe: dict[str, set[str]] = {}
        self._in_flight: dict[str, Batch] = {}
        self._size = 0

    def size(self) -> int:
        return self._size

    def hold(self, app_id: str, key: str, event: Event, due: float) -> None:
        seq = next(self._seq)
        if (app_id, key) not in self._held:
            self._size += 1
        self._held[(app_id, key)] = (seq, event)
        heapq.heappush(self._due, (due, seq, app_id, key))

    def cancel(self, app_id: str, key: str) -> bool:
        if self._held.pop((app_id, key), None) is None:
            return False
        self._size -= 1
        return True

    def release(self, now: float) -> list[tuple[str, Event]]:
        released = []
        while self._due and self._due[0][0] <= now:
            _, seq, app_id, key = heapq.heappop(self._due)
            held = self._held.get((app_id, key))
            if held is not None and held[0] == seq:
                del self._held[(app_id, key)]
                self._size -= 1
                released.append((app_id, held[1]))
        return released

    def next_release(self) -> float | None:
        while self._due:
            due, seq, app_id, key = self._due[0]
            held = self._held.get((app_id, key))
            if held is not None and held[0] == seq:
                return due
            heapq.heappop(self._due)  # cancelled or replaced
        return None

    def enqueue(self, lane: str, event: Event, now: float, dedupe: str | None = None) -> bool:
        if dedupe is not None:
            keys = self._dedupe.setdefault(lane, set())
            if dedupe in keys:
                return False
            keys.add(dedupe)
        self._queues.setdefault(lane, deque()).append((now, event, dedupe))
        self._size += 1
        return True

    def waiting(self) -> dict[str, tuple[int, float]]:
        return {
            lane: (len(queue), queue[0][0])
            for lane, queue in self._queues.items()
            if queue and lane not in self._in_flight
        }

    def take(self, lane: str, limit: int, now: float) -> Batch:
        if lane in self._in_flight:
            raise RuntimeError(f"lane {lane} already has a batch in flight")
        queue = self._queues.get(lane, deque())
        keys = self._dedupe.get(lane, set())
        events = []
        while queue and len(events) < limit:
            _, event, dedupe = queue.popleft()
            if dedupe is not None:
                keys.discard(dedupe)
            events.append(event)
        if not queue:
            self._queues.pop(lane, None)
        batch = Batch(lane, tuple(events), int(now * 1000))
        self._in_flight[lane] = batch
        return batch

    def finish(self, batch: Batch) -> None:
        if self._in_flight.get(batch.lane) is batch:
            del self._in_flight[batch.lane]
            self._size -= len(batch.events)

    def unfinished(self) -> list[Batch]:
        return []
