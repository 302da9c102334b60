"""The console's per-process object: the tap's sink, the streams, the rates history, and
(with Redis) the relay that makes all of it cluster-wide.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

import gevent

from ipe.console.auth import Throttle
from ipe.console.tap import Tap
from ipe.console.watchers import Watchers

if TYPE_CHECKING:
    from ipe.app import State

log = logging.getLogger(__name__)

SAMPLE_EVERY = 2.0  # seconds between two points of the rates history
HISTORY = 150  # points kept: five minutes
FOREVER = float("inf")


class Console:
    """Everything the console keeps in one process; built only when it is enabled."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.config = state.config.console
        self.tap: Tap = state.tap
        self.tap.deliveries = {}
        self.started = time.time()
        self.node = state.redis.node if state.redis is not None else f"local.{os.getpid()}"
        self.tap.node = self.node
        self.throttle = Throttle()
        self.history: deque[tuple[float, float, float, int]] = deque(maxlen=HISTORY)
        self._last: tuple[float, int, int] | None = None
        self.relay: Any = None  # ipe.console.relay.Relay, with Redis
        if state.redis is None:
            self.watchers = Watchers(self._watched_here)
            self.tap.sink = self.watchers.deliver
        else:
            from ipe.console.relay import Relay

            self.relay = Relay(state.redis, self)
            self.tap.on_delivery = self.relay.save_delivery
            self.watchers = Watchers(self.relay.watched_here)
            self.tap.sink = self.relay.publish
        self._sampler: gevent.Greenlet | None = None

    def start(self) -> None:
        """Start the rates sampler (and the relay), once per process after fork."""
        if self._sampler is None:
            self._sampler = gevent.spawn(self._sample_forever)
            if self.relay is not None:
                self.relay.start()

    def stop(self) -> None:
        """End every console stream (shutdown)."""
        self.watchers.close_all()

    def _watched_here(self, app_id: str, watched: bool) -> None:
        if watched:
            self.tap.apps[app_id] = FOREVER
        else:
            self.tap.apps.pop(app_id, None)

    # --- this node's numbers ------------------------------------------------------------------

    def _sample_forever(self) -> None:
        while True:
            gevent.sleep(SAMPLE_EVERY)
            try:
                self.sample()
                if self.relay is not None:
                    self.relay.tick()
            except Exception:  # the console must never take anything down
                log.exception("console sampler failed")

    def sample(self) -> None:
        """Add one point (messages/s in and out, connections) to the history."""
        self.state.export_metrics()  # folds the hub's latest tallies into the tap too
        now = time.time()
        received, delivered = self.tap.received, self.tap.delivered
        if self._last is not None:
            then, was_in, was_out = self._last
            span = max(now - then, 0.001)
            self.history.append(
                (
                    round(now, 1),
                    round((received - was_in) / span, 1),
                    round((delivered - was_out) / span, 1),
                    len(self.state.hub.connections),
                )
            )
        self._last = (now, received, delivered)

    def node_stats(self) -> dict[str, Any]:
        """This process's numbers for the overview."""
        state = self.state
        per_app = Counter(conn.app.app_id for conn in tuple(state.hub.connections.values()))
        last = self.history[-1] if self.history else (time.time(), 0.0, 0.0, 0)
        try:
            waiting = state.webhooks.store.size()
        except Exception:  # a Redis store that cannot answer now
            waiting = None
        return {
            "node": self.node,
            "started": round(self.started, 1),
            "uptime": round(time.time() - self.started, 1),
            "connections": len(state.hub.connections),
            "apps": dict(per_app),
            "in_rate": last[1],
            "out_rate": last[2],
            "webhooks": {
                "sent": self.tap.webhooks_sent,
                "failed": self.tap.webhooks_failed,
                "waiting": waiting,
            },
            "history": [list(point) for point in self.history],
        }

    def overview(self) -> dict[str, Any]:
        """Every node's numbers and the cluster's totals."""
        state = self.state
        if self.relay is not None:
            self.relay.overview_wanted()
            nodes = self.relay.nodes(self.node_stats())
        else:
            nodes = [self.node_stats()]
        apps: Counter[str] = Counter()
        for node in nodes:
            apps.update(node.get("apps") or {})
        live = [n for n in nodes if "connections" in n]
        waiting = [n["webhooks"]["waiting"] for n in live if n["webhooks"]["waiting"] is not None]
        redis = None
        if state.redis is not None:
            redis = {"up": state.redis.up, "where": state.config.redis.describe()}  # type: ignore[union-attr]
        return {
            "nodes": nodes,
            "connections": sum(n["connections"] for n in live),
            "apps": [
                {"app_id": app.app_id, "name": app.name, "connections": apps.get(app.app_id, 0)}
                for app in state.apps.all
            ],
            "in_rate": round(sum(n["in_rate"] for n in live), 1),
            "out_rate": round(sum(n["out_rate"] for n in live), 1),
            "webhooks": {
                "sent": sum(n["webhooks"]["sent"] for n in live),
                "failed": sum(n["webhooks"]["failed"] for n in live),
                # With Redis every node sees the same shared store: the largest is the latest.
                "waiting": max(waiting) if waiting else None,
            },
            "redis": redis,
            "history": _sum_histories([n.get("history") or [] for n in live]),
        }

    def deliveries(self, app_id: str, lanes: list[str]) -> dict[str, list[dict[str, Any]]]:
        """The last webhook deliveries of each of the app's targets (lane name → list)."""
        if self.relay is not None:
            return self.relay.deliveries(app_id, lanes)
        kept = self.tap.deliveries or {}
        return {lane: list(kept.get(lane, ())) for lane in lanes}


def _sum_histories(histories: list[list[list[float]]]) -> list[list[float]]:
    """Add the nodes' histories point by point, aligned on their latest points."""
    length = max((len(h) for h in histories), default=0)
    total: list[list[float]] = []
    for back in range(length, 0, -1):
        point = [0.0, 0.0, 0.0, 0]
        for history in histories:
            if len(history) >= back:
                t, rate_in, rate_out, conns = history[-back]
                point = [
                    max(point[0], t),
                    point[1] + rate_in,
                    point[2] + rate_out,
                    point[3] + conns,
                ]
        total.append([point[0], round(point[1], 1), round(point[2], 1), point[3]])
    return total
