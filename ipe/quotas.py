"""Per-app quotas: open connections and REST requests per second, counted in this process.

`Quotas` is the single-process store; `ipe.redis.quotas.RedisQuotas` has the same methods and
counts the whole cluster. A limit of 0 is never asked about: callers skip the call, so a quota
that is off costs nothing (and never a Redis round trip).

Every refusal, whichever quota it comes from, is counted in `ipe_rate_limited_total{app_id,
limit}` and logged at most once a second per app and limit (an abusive client must not be
able to flood the log).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ipe.metrics import Metrics

log = logging.getLogger(__name__)

# The quotas' names: config keys, the `limit` label of ipe_rate_limited_total.
CONNECTIONS = "max_connections"
SUBSCRIPTIONS = "max_subscriptions_per_connection"
BACKEND_EVENTS = "max_backend_events_per_second"
READ_REQUESTS = "max_read_requests_per_second"
RETRY_AFTER = 1  # seconds: every rate window is one second long


class Quotas:
    """Connections per app and per-second request windows, for one process."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._connections: dict[str, int] = {}
        # (app_id, limit) -> [the second it counts, amount used in it]
        self._windows: dict[tuple[str, str], list[int]] = {}
        self._logged: dict[tuple[str, str], float] = {}
        self.tap: Any = None  # the console's Tap (State.tap), told of refusals while it watches

    # --- connections --------------------------------------------------------------------------

    def acquire_connection(self, app_id: str, maximum: int) -> bool:
        """Count one more connection of the app; False (nothing counted) when at `maximum`."""
        if self._connections.get(app_id, 0) >= maximum:
            return False
        self._count(app_id, 1)
        return True

    def release_connection(self, app_id: str) -> None:
        """Uncount a connection counted by `acquire_connection`."""
        self._count(app_id, -1)

    def _count(self, app_id: str, delta: int) -> None:
        count = self._connections.get(app_id, 0) + delta
        if count > 0:
            self._connections[app_id] = count
        else:
            self._connections.pop(app_id, None)

    def local_connections(self, app_id: str) -> int:
        """Connections this process holds against the app's quota."""
        return self._connections.get(app_id, 0)

    # --- rates --------------------------------------------------------------------------------

    def take(self, app_id: str, limit: str, amount: int, maximum: int) -> bool:
        """Use `amount` of this second's `maximum`; False (nothing used) if it would exceed it."""
        second = int(time.time())
        window = self._windows.get((app_id, limit))
        if window is None:
            window = self._windows[(app_id, limit)] = [second, 0]
        elif window[0] != second:
            window[0], window[1] = second, 0
        if window[1] + amount > maximum:
            return False
        window[1] += amount
        return True

    # --- refusals -----------------------------------------------------------------------------

    def refused(self, app_id: str, limit: str) -> None:
        """Count a refusal, and log it unless this app and limit were logged within a second."""
        self.metrics.rate_limited.labels(app_id=app_id, limit=limit).inc()
        tap = self.tap
        if tap is not None and app_id in tap.apps:
            tap.emit(app_id, "rate_limited", limit=limit)
        now = time.monotonic()
        key = (app_id, limit)
        if now - self._logged.get(key, -2.0) >= 1.0:
            self._logged[key] = now
            log.warning("app %s reached its %s quota; refusing (logged once a second)", *key)
