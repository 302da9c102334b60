"""Prometheus counters and gauges of one ipe process (prometheus_client).

Every series is bounded: `app_id` labels only apps ipe serves (configured, or from the app
manager; never a client's guess), close codes are bucketed
(a client may close with any code from 1000 to 4999), statuses and endpoints are ipe's own.
Under gunicorn with several workers, set PROMETHEUS_MULTIPROC_DIR so that a scrape sums every
worker (gunicorn.conf.py marks dead workers); otherwise each process reports its own values.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

from ipe import __version__, protocol

if TYPE_CHECKING:
    from ipe.hub import AppTally

# A `_created` gauge per counter series doubles the series for a timestamp nobody graphs
# (and multiprocess mode under gunicorn has none): leave them out everywhere.
disable_created_metrics()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# Close codes with a series of their own: the RFC 6455 registry and the Pusher codes ipe
# sends. Any other code counts in its Pusher range (what a client should do about it).
_KNOWN_CODES = frozenset(range(1000, 1016)) | {
    value
    for name, value in vars(protocol).items()
    if name.isupper() and isinstance(value, int) and 4000 <= value <= 4399
}
_RANGES = ((3000, 3999), (4000, 4099), (4100, 4199), (4200, 4299), (4300, 4399), (4400, 4999))


def close_code_label(code: int) -> str:
    """The `code` label for a close code: itself if known, else its range, else "other"."""
    if code in _KNOWN_CODES:
        return str(code)
    for low, high in _RANGES:
        if low <= code <= high:
            return f"{low}-{high}"
    return "other"


class Metrics:
    """Every metric ipe exports, registered on a registry of its own."""

    def __init__(self, app_ids: tuple[str, ...] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        app = ["app_id"]
        self.info = Gauge(
            "ipe_info",
            "Always 1; the ipe version",
            ["version"],
            registry=r,
            multiprocess_mode="max",
        )
        self.info.labels(version=__version__).set(1)
        self.connections = Gauge(
            "ipe_connections",
            "Open WebSocket connections",
            app,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.http_sessions = Gauge(
            "ipe_http_sessions",
            "Sessions of pusher-js's HTTP fallback transports held by this process "
            "(also counted in ipe_connections)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.connections_total = Counter(
            "ipe_connections_opened_total", "WebSocket connections accepted", app, registry=r
        )
        self.disconnections = Counter(
            "ipe_disconnections_total",
            "WebSocket connections ended, by close code (unknown codes bucketed by range)",
            ["app_id", "code"],
            registry=r,
        )
        self.messages_received = Counter(
            "ipe_ws_messages_received_total", "Messages received from clients", app, registry=r
        )
        self.messages_sent = Counter(
            "ipe_ws_messages_sent_total",
            "Event frames delivered to clients (channel, user and watchlist events)",
            app,
            registry=r,
        )
        self.bytes_received = Counter(
            "ipe_ws_bytes_received_total",
            "Bytes read from accepted WebSocket connections (frames as sent)",
            app,
            registry=r,
        )
        self.bytes_sent = Counter(
            "ipe_ws_bytes_sent_total",
            "Bytes of frames written to WebSocket clients (events and protocol replies; "
            "pings and close frames left out)",
            app,
            registry=r,
        )
        self.http_requests = Counter(
            "ipe_http_requests_total",
            "HTTP requests (REST API, health, metrics), by app, endpoint and status",
            ["app_id", "endpoint", "status"],
            registry=r,
        )
        self.slow_consumer_closes = Counter(
            "ipe_slow_consumer_closes_total",
            "Connections closed with 4100 because their outbox overflowed",
            registry=r,
        )
        self.broker_failures = Counter(
            "ipe_broker_publish_failures_total",
            "Messages that could not be handed to the broker (lost for other nodes)",
            registry=r,
        )
        self.broker_published = Counter(
            "ipe_broker_published_total", "Messages this process sent to Redis Pub/Sub", registry=r
        )
        self.broker_topics = Gauge(
            "ipe_broker_topics",
            "Redis Pub/Sub channels this process subscribes to (lingering ones included)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.pubsub_received = Counter(
            "ipe_pubsub_messages_received_total",
            "Messages this node received from Redis Pub/Sub",
            registry=r,
        )
        self.pubsub_dropped = Counter(
            "ipe_pubsub_messages_dropped_total",
            "Pub/Sub messages this node could not carry out (malformed, or failed to deliver)",
            registry=r,
        )
        self.redis_reconnects = Counter(
            "ipe_redis_reconnects_total", "Reconnections of the Redis listener", registry=r
        )
        self.janitor_sweeps = Counter(
            "ipe_janitor_sweeps_total", "Janitor passes looking for dead nodes", registry=r
        )
        self.nodes_reaped = Counter(
            "ipe_nodes_reaped_total",
            "Shares (one app of one dead node) removed by this process's janitor",
            registry=r,
        )
        self.webhooks_sent = Counter(
            "ipe_webhooks_sent_total",
            "Webhook requests acknowledged by receivers",
            app,
            registry=r,
        )
        self.webhooks_failed = Counter(
            "ipe_webhooks_failed_total", "Webhook batches given up after retries", app, registry=r
        )
        self.webhooks_waiting = Gauge(
            "ipe_webhooks_waiting",
            "Webhook events waiting to be sent: held, queued or in flight (with Redis: in the "
            "whole cluster, as this process last saw it)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.webhooks_unsaved = Gauge(
            "ipe_webhooks_unsaved",
            "Webhook events only this process holds (with Redis: not yet written to it, e.g. "
            "while it is unreachable)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.webhooks_dropped = Counter(
            "ipe_webhooks_dropped_total",
            "Webhook events dropped because the webhook queue was full",
            app,
            registry=r,
        )
        # Every app's series exist from the start (at 0), so dashboards and rate() see them.
        for app_id in sorted(app_ids):
            for metric in (
                self.connections,
                self.connections_total,
                self.messages_received,
                self.messages_sent,
                self.bytes_received,
                self.bytes_sent,
                self.webhooks_sent,
                self.webhooks_failed,
                self.webhooks_dropped,
            ):
                metric.labels(app_id=app_id)

    def add_tallies(self, tallies: dict[str, AppTally]) -> None:
        """Fold the hub's plain-int tallies in (counting per message in prometheus_client
        would cost a lock and several calls on the hottest paths)."""
        for app_id, t in tallies.items():
            self.connections.labels(app_id=app_id).set(t.open)
            if t.opened:
                self.connections_total.labels(app_id=app_id).inc(t.opened)
            if t.received:
                self.messages_received.labels(app_id=app_id).inc(t.received)
            if t.delivered:
                self.messages_sent.labels(app_id=app_id).inc(t.delivered)
            if t.bytes_in:
                self.bytes_received.labels(app_id=app_id).inc(t.bytes_in)
            if t.bytes_out:
                self.bytes_sent.labels(app_id=app_id).inc(t.bytes_out)
            buckets: dict[str, int] = {}
            for code, n in t.closes.items():
                label = close_code_label(code)
                buckets[label] = buckets.get(label, 0) + n
            for label, n in buckets.items():
                self.disconnections.labels(app_id=app_id, code=label).inc(n)

    def add_pubsub(self, received: int, dropped: int, published: int, topics: int) -> None:
        """Fold the broker's Pub/Sub tallies in."""
        if received:
            self.pubsub_received.inc(received)
        if dropped:
            self.pubsub_dropped.inc(dropped)
        if published:
            self.broker_published.inc(published)
        self.broker_topics.set(topics)

    def render(self) -> bytes:
        """The Prometheus text exposition, summed over workers in multiprocess mode."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            _multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
