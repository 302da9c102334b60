"""Where webhook events wait: held for the grace period, queued per target, in flight. Pure.

`ipe.webhooks` decides *when* things happen (grace, batch window, retries, HTTP); a store only
keeps the state. `InMemoryWebhookStore` is the single-process store; `RedisWebhookStore`
(`ipe.redis.webhook_store`) keeps the same state in Redis, so that pending webhooks survive a
restart and a member who leaves on one node and comes back on another cancels the held
`member_removed` wherever it was held.

Terms: a *lane* is one (app, target) pair, named "<app_id>/<index of the target>"; it has a
queue of events waiting and at most one *batch* in flight. An *arrival* is one emitted event
on its way into the store, already routed to the lanes whose filters it passes. A *held*
arrival (`member_removed`, `channel_vacated`) waits until its grace period ends, under a key
that its *return* (`member_added`, `channel_occupied` of the same member or channel) shares:
a return that finds the held event cancels it and is dropped too.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

Event = dict[str, Any]


def lane_name(app_id: str, index: int) -> str:
    """The lane of an app's `index`-th target: every node names it alike (from the config)."""
    return f"{app_id}/{index}"


@dataclass(frozen=True)
class Arrival:
    """One emitted event on its way into a store."""

    event: Event
    lanes: tuple[str, ...]  # the app's lanes whose filters let the event through
    at: float  # when it was emitted (Unix seconds)
    key: str | None = None  # grace key pairing a held event with its return; None: neither
    held: bool = False  # True: wait until `until`; False with a key: a return
    until: float = 0.0  # end of the grace period that started at `at`
    dedupe: str | None = None  # one event per lane with this key among those waiting


@dataclass(frozen=True)
class Batch:
    """The events of one webhook request and its creation time (the body's `time_ms`)."""

    lane: str
    events: tuple[Event, ...]
    created_ms: int
    token: str = ""  # tells this batch from a later one of the same lane (Redis)


class WebhookStore(Protocol):
    """The interface every store implements; all times are Unix seconds."""

    durable: bool
    """True if what waits here outlives this process (then shutdown leaves it to others)."""

    def size(self) -> int:
        """Events waiting: held, queued and in flight (the bound of `queue_size`); cheap."""
        ...

    def unsaved(self) -> int:
        """Events that only this process holds, lost if it exits now."""
        ...

    def accept(self, app_id: str, arrivals: list[Arrival]) -> None:
        """Take in one app's arrivals, in emit order: hold, cancel or queue each."""
        ...

    def release(self, now: float) -> None:
        """Move every held event due at `now` into its lanes (and write what was accepted)."""
        ...

    def next_release(self) -> float | None:
        """When `release` has something to do next (a hold falls due, a periodic look)."""
        ...

    def waiting(self) -> dict[str, tuple[int, float]]:
        """Lanes with queued events and no batch in flight → (count, enqueue time of the oldest)."""
        ...

    def take(self, lane: str, limit: int, now: float) -> Batch | None:
        """Move up to `limit` queued events into the lane's batch in flight, created `now`;
        None if there is nothing to take or the lane is busy (another node took it)."""
        ...

    def finish(self, batch: Batch) -> None:
        """Forget a batch in flight: delivered or given up."""
        ...

    def abandon(self, batch: Batch) -> None:
        """Leave a batch in flight for another process to send (shutdown)."""
        ...

    def owns(self, batch: Batch) -> bool:
        """False once another process has taken over the batch (this one was thought dead)."""
        ...

    def unfinished(self) -> list[Batch]:
        """Batches in flight that nobody sends any more, now this process's to send."""
        ...

    def close(self) -> None:
        """Give back every batch this process still sends (shutdown)."""
        ...


class InMemoryWebhookStore:
    """The single-process store: lost with the process, so shutdown flushes it.

    Arrivals come in emit order from one process, so a return always comes after the event it
    cancels; the Redis store also handles a return that overtakes its held event.
    """

    durable = False

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], tuple[int, Arrival]] = {}
        self._due: list[tuple[float, int, str, str]] = []  # heap; stale entries skipped
        self._seq = itertools.count()
        self._queues: dict[str, deque[tuple[float, Event, str | None]]] = {}
        self._dedupe: dict[str, set[str]] = {}
        self._in_flight: dict[str, Batch] = {}
        self._size = 0

    def size(self) -> int:
        return self._size

    def unsaved(self) -> int:
        return self._size

    def accept(self, app_id: str, arrivals: list[Arrival]) -> None:
        for arrival in arrivals:
            key = arrival.key
            if key is not None and arrival.held:
                self._hold(app_id, key, arrival)
            elif key is None or not self._cancel(app_id, key):
                for lane in arrival.lanes:
                    self._enqueue(lane, arrival.event, arrival.at, arrival.dedupe)

    def _hold(self, app_id: str, key: str, arrival: Arrival) -> None:
        seq = next(self._seq)
        if (app_id, key) not in self._held:
            self._size += 1
        self._held[(app_id, key)] = (seq, arrival)
        heapq.heappush(self._due, (arrival.until, seq, app_id, key))

    def _cancel(self, app_id: str, key: str) -> bool:
        if self._held.pop((app_id, key), None) is None:
            return False
        self._size -= 1
        return True

    def _enqueue(self, lane: str, event: Event, now: float, dedupe: str | None) -> None:
        if dedupe is not None:
            keys = self._dedupe.setdefault(lane, set())
            if dedupe in keys:
                return
            keys.add(dedupe)
        self._queues.setdefault(lane, deque()).append((now, event, dedupe))
        self._size += 1

    def release(self, now: float) -> None:
        while self._due and self._due[0][0] <= now:
            due, seq, app_id, key = heapq.heappop(self._due)
            held = self._held.get((app_id, key))
            if held is not None and held[0] == seq:
                del self._held[(app_id, key)]
                self._size -= 1
                arrival = held[1]
                for lane in arrival.lanes:
                    self._enqueue(lane, arrival.event, min(due, now), None)

    def next_release(self) -> float | None:
        while self._due:
            due, seq, app_id, key = self._due[0]
            held = self._held.get((app_id, key))
            if held is not None and held[0] == seq:
                return due
            heapq.heappop(self._due)  # cancelled or replaced
        return None

    def waiting(self) -> dict[str, tuple[int, float]]:
        return {
            lane: (len(queue), queue[0][0])
            for lane, queue in self._queues.items()
            if queue and lane not in self._in_flight
        }

    def take(self, lane: str, limit: int, now: float) -> Batch | None:
        if lane in self._in_flight:
            return None
        queue = self._queues.get(lane)
        if not queue:
            return None
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

    def abandon(self, batch: Batch) -> None:
        pass  # nobody else could send it: shutdown gives it up instead

    def owns(self, batch: Batch) -> bool:
        return True

    def unfinished(self) -> list[Batch]:
        return []

    def close(self) -> None:
        pass
