"""Prometheus counters and gauges of one ipe process (prometheus_client).

Under gunicorn with several workers, set PROMETHEUS_MULTIPROC_DIR so that a scrape sums every
worker (gunicorn.conf.py marks dead workers); otherwise each process reports its own values.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client import multiprocess as _multiprocess

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """Every metric ipe exports, registered on a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge(
            "ipe_connections",
            "Open WebSocket connections",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.connections_total = Counter(
            "ipe_connections_opened_total", "WebSocket connections accepted", registry=r
        )
        self.disconnections = Counter(
            "ipe_disconnections_total",
            "WebSocket connections ended, by close code (codes clients chose: 3xxx/4xxx)",
            ["code"],
            registry=r,
        )
        self.messages_received = Counter(
            "ipe_ws_messages_received_total", "Messages received from clients", registry=r
        )
        self.messages_sent = Counter(
            "ipe_ws_messages_sent_total", "Event frames written to clients", registry=r
        )
        self.http_requests = Counter(
            "ipe_http_requests_total",
            "REST requests, by endpoint and status",
            ["endpoint", "status"],
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
            "ipe_webhooks_sent_total", "Webhook requests acknowledged by receivers", registry=r
        )
        self.webhooks_failed = Counter(
            "ipe_webhooks_failed_total", "Webhook batches given up after retries", registry=r
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
            registry=r,
        )

    def add_tallies(
        self, open_now: int, opened: int, received: int, delivered: int, closes: dict[str, int]
    ) -> None:
        """Fold the hub's plain-int tallies in (counting per message in prometheus_client
        would cost a lock and several calls on the hottest paths)."""
        self.connections.set(open_now)
        if opened:
            self.connections_total.inc(opened)
        if received:
            self.messages_received.inc(received)
        if delivered:
            self.messages_sent.inc(delivered)
        for code, n in closes.items():
            self.disconnections.labels(code=code).inc(n)

    def render(self) -> bytes:
        """The Prometheus text exposition, summed over workers in multiprocess mode."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            _multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
