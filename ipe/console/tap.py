"""The console's tap: what the hot paths report while someone watches an app. No I/O.

Every hook in the hub, sessions, REST and webhooks is `if app_id in tap.apps:` followed by
one call, so an app nobody watches costs one dict lookup per event. `apps` holds the apps
watched anywhere in the cluster (with Redis, a lease renewed by the watching node); what is
emitted goes to `sink`, set by the console (local streams, or the Redis relay).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

DELIVERIES_KEPT = 50  # webhook deliveries remembered per target
PREVIEW_BYTES = 120  # the first bytes of an event's data shown in the log

Record = dict[str, Any]


def _ignore(app_id: str, record: Record) -> None:
    pass


class Tap:
    """Hot-path hooks: a dict check first, then one call that builds a small record."""

    def __init__(self, node: str = "local") -> None:
        self.node = node
        # app id -> expiry (time.monotonic()); with Redis refreshed by the watching node's lease.
        self.apps: dict[str, float] = {}
        self.sink: Callable[[str, Record], None] = _ignore
        self.seq = 0
        # Cumulative counters for the overview, folded in once a second (never per message).
        self.received = 0
        self.delivered = 0
        self.webhooks_sent = 0
        self.webhooks_failed = 0
        # Recent webhook deliveries per lane, kept only while the console is enabled; with
        # Redis also handed to `on_delivery` (the relay keeps them cluster-wide).
        self.deliveries: dict[str, deque[Record]] | None = None
        self.on_delivery: Callable[[str, Record], None] | None = None

    def emit(self, app_id: str, kind: str, **fields: Any) -> None:
        """Send one record of `kind` for a watched app (callers check `app_id in apps`)."""
        self.seq += 1
        fields["k"] = kind
        fields["n"] = self.node
        fields["s"] = self.seq
        fields["t"] = round(time.time(), 3)
        self.sink(app_id, fields)

    # --- helpers for the hooks ------------------------------------------------------------------

    def api_message(self, app_id: str, channel: str, event: str, data: str) -> None:
        """An event published through REST (or the console's form)."""
        self.emit(
            app_id,
            "api_message",
            channel=channel,
            event=event,
            size=len(data.encode(errors="replace")),
            preview=data[:PREVIEW_BYTES],
        )

    def add_tallies(self, received: int, delivered: int) -> None:
        """Fold in the hub's per-second tallies (called with the metrics export)."""
        self.received += received
        self.delivered += delivered

    def webhook(
        self,
        app_id: str,
        lane: str,
        url: str,
        events: int,
        error: str | None,
        attempt: int,
        latency: float,
        final: bool,
    ) -> None:
        """One webhook attempt; `final` when the batch is done (delivered or given up)."""
        ok = error is None
        status = "2xx" if ok else error
        ms = round(latency * 1000, 1)
        if not final:
            if app_id in self.apps:
                kind = "webhook_sent" if ok else "webhook_failed"
                self.emit(
                    app_id,
                    kind,
                    url=url,
                    events=events,
                    status=status,
                    attempt=attempt,
                    latency_ms=ms,
                )
            return
        if ok:
            self.webhooks_sent += 1
        else:
            self.webhooks_failed += 1
        if self.deliveries is not None:
            kept = self.deliveries.get(lane)
            if kept is None:
                kept = self.deliveries[lane] = deque(maxlen=DELIVERIES_KEPT)
            delivery = {
                "t": round(time.time(), 3),
                "url": url,
                "events": events,
                "status": status,
                "ok": ok,
                "attempts": attempt,
                "latency_ms": ms,
                "node": self.node,
            }
            kept.appendleft(delivery)
            if self.on_delivery is not None:
                self.on_delivery(lane, delivery)
