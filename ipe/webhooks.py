"""Webhooks with Pusher's semantics: batched, delayed for a grace period, signed, retried.

`emit()` runs in a connection's greenlet and only appends to a bounded in-process inbox, so a
receiver that is slow, failing or gone (or a Redis that is) never delays the WebSocket side.
One scheduler greenlet moves the inbox into the store, routed to each target whose filters
match (`member_removed`/`channel_vacated` held for the grace period, cancelled together with
the matching return), and starts a sender greenlet per target (a *lane*) when a batch is due.
A lane delivers its batches in order, one at a time, and retries a failed one with
exponential back-off until `retry_for` seconds after its creation; a hanging receiver delays
only its own lane. What waits lives behind `ipe.webhook_store`: in this process, or in Redis
(`ipe.redis.webhook_store`), where holds, queues and batches in flight are shared by every
node, so that each webhook is sent once per cluster and a restarted node loses none.

A batch's `time_ms` is its creation time (Pusher's meaning) and a retry resends the same bytes.
pusher-http-python's `validate_webhook` rejects a `time_ms` older than 300 s, which is why the
retry deadline counts from creation too: with the default `retry_for` (300 s) every attempt
starts within 300 s of its `time_ms` (clocks in sync).
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from collections import deque
from http.client import HTTPException
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import gevent
import gevent.event
from gevent import Greenlet

from ipe import __version__, protocol
from ipe.auth import webhook_signature
from ipe.backoff import Backoff
from ipe.config import AppConfig, WebhookSettings, WebhookTarget
from ipe.console.tap import Tap
from ipe.webhook_store import (
    Arrival,
    Batch,
    Event,
    InMemoryWebhookStore,
    WebhookStore,
    lane_name,
)

if TYPE_CHECKING:
    from ipe.metrics import Metrics

log = logging.getLogger(__name__)

# A held event (first) is cancelled by its return (second) within the grace period.
_HELD = {"member_removed", "channel_vacated"}
_RETURNS = {"member_added", "channel_occupied"}
_DROP_LOG_INTERVAL = 10.0  # seconds between two log lines about a full queue


class _AttemptTimeout(Exception):
    """One delivery attempt outlived `timeout` (a receiver that never answers)."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is a failure: urllib would turn the POST into a GET and lose the body."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def grace_key(event: Event) -> str | None:
    """The key pairing a held event with the return that cancels it; None for the others."""
    name = event["name"]
    if name in ("member_removed", "member_added"):
        return f"member\0{event['channel']}\0{event['user_id']}"
    if name in ("channel_vacated", "channel_occupied"):
        return f"channel\0{event['channel']}"
    return None


def encode_body(batch: Batch) -> bytes:
    """The request body of a batch; the same bytes on every attempt, so retries sign alike."""
    return protocol.dumps({"time_ms": batch.created_ms, "events": list(batch.events)}).encode()


def target_wants(target: WebhookTarget, event: Event) -> bool:
    """True if the target's event-type and channel-prefix filters let `event` through."""
    return event["name"] in target.event_types and event.get("channel", "").startswith(
        target.channel_prefix
    )


def safe_url(url: str) -> str:
    """The URL without credentials or query string, for logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class Webhooks:
    """Queues webhook events of every app and delivers them in the background."""

    def __init__(
        self,
        settings: WebhookSettings,
        apps: tuple[AppConfig, ...],
        metrics: Metrics | None = None,
        store: WebhookStore | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store: WebhookStore = store if store is not None else InMemoryWebhookStore()
        self._lanes: dict[str, tuple[AppConfig, WebhookTarget]] = {}
        self._app_lanes: dict[str, list[tuple[str, WebhookTarget]]] = {}
        self.set_apps(apps)
        self._inbox: deque[tuple[str, Event, float]] = deque()
        self._wake = gevent.event.Event()
        self._stopping = gevent.event.Event()
        self._drained = gevent.event.Event()
        self._scheduler: Greenlet | None = None
        self._senders: dict[str, Greenlet] = {}
        self._closed = False
        self._dropped_unlogged = 0
        self._drop_logged_at = -_DROP_LOG_INTERVAL
        self._opener = urllib.request.build_opener(_NoRedirect)
        self.tap = Tap()  # the console's (set by ipe.app); idle unless the console is on

    def set_apps(self, apps: tuple[AppConfig, ...]) -> None:
        """Deliver to the targets of `apps` from now on (at start, and after a reload)."""
        # Lanes come from the config, so every node names the same target alike.
        lanes: dict[str, tuple[AppConfig, WebhookTarget]] = {}
        app_lanes: dict[str, list[tuple[str, WebhookTarget]]] = {}
        for app in apps:
            for index, target in enumerate(app.webhooks):
                lane = lane_name(app.app_id, index)
                lanes[lane] = (app, target)
                app_lanes.setdefault(app.app_id, []).append((lane, target))
        self._lanes, self._app_lanes = lanes, app_lanes
        set_store_apps = getattr(self.store, "set_apps", None)
        if set_store_apps is not None:
            set_store_apps(apps)

    # --- the WebSocket side -------------------------------------------------------------------

    def emit(self, app: AppConfig, event: Event) -> None:
        """Queue one webhook event (`name`, `channel`, ...) for the app's targets; never blocks."""
        if not app.webhooks:
            return
        if self._closed or len(self._inbox) + self.store.size() >= self.settings.queue_size:
            self._drop(app, event)
            return
        self._inbox.append((app.app_id, event, time.time()))
        self._wake.set()

    def _drop(self, app: AppConfig, event: Event) -> None:
        if self.metrics is not None:
            self.metrics.webhooks_dropped.labels(app_id=app.app_id).inc()
        self._dropped_unlogged += 1
        now = time.monotonic()
        if now - self._drop_logged_at >= _DROP_LOG_INTERVAL:
            log.warning(
                "webhook queue %s: dropped %d event(s), latest %s for app %s",
                "closed" if self._closed else f"full ({self.settings.queue_size} events)",
                self._dropped_unlogged,
                event["name"],
                app.app_id,
            )
            self._dropped_unlogged = 0
            self._drop_logged_at = now

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the scheduler (once per process, after fork)."""
        if self._scheduler is not None or not self._lanes:
            return
        self._scheduler = gevent.spawn(self._schedule_forever)

    def wake(self) -> None:
        """Run a scheduler pass now (e.g. Redis is reachable again: write what waits)."""
        self._wake.set()

    def stop(self) -> None:
        """Send what waits, grace periods cut short, for up to `flush_timeout`; then stop.

        With a durable store, what waits is written to it and left to the other nodes (or
        to this one restarted): held events stay held, a failing batch is given back."""
        if self._scheduler is None:
            self._closed = True
            return
        self._stopping.set()
        self._wake.set()
        self._drained.wait(self.settings.flush_timeout)
        self._closed = True
        gevent.killall([self._scheduler, *self._senders.values()], timeout=1)
        self._scheduler = None
        self.store.close()
        left = len(self._inbox) + self.store.unsaved()
        if left:
            log.warning(
                "shutdown: %d webhook event(s) could not be %s in time",
                left,
                "written to Redis" if self.store.durable else "delivered",
            )

    # --- scheduling ---------------------------------------------------------------------------

    def _schedule_forever(self) -> None:
        while True:
            try:
                timeout = self._schedule()
            except Exception:
                # Never let the scheduler die of one error (the store handles Redis's own).
                log.exception("webhook scheduler failed; retrying")
                timeout = 1.0
            self._wake.wait(timeout)

    def _schedule(self) -> float | None:
        """One pass: take in, release, dispatch; returns seconds until the next pass is due."""
        self._wake.clear()
        flushing = self._stopping.is_set()
        now = time.time()
        store = self.store
        arrivals: dict[str, list[Arrival]] = {}
        while self._inbox:
            app_id, event, emitted = self._inbox.popleft()
            arrival = self._arrival(app_id, event, emitted)
            if arrival is not None:
                arrivals.setdefault(app_id, []).append(arrival)
        for app_id, items in arrivals.items():
            store.accept(app_id, items)
        # At shutdown nobody is left to come back: a store that dies with us releases now.
        store.release(float("inf") if flushing and not store.durable else now)

        window = self.settings.batch_window
        next_due = store.next_release()
        for batch in store.unfinished():
            self._send(batch)
        for lane, (count, oldest) in store.waiting().items():
            if lane in self._senders:
                continue
            if flushing or count >= self.settings.max_batch_size or now >= oldest + window:
                batch = store.take(lane, self.settings.max_batch_size, now)
                if batch is not None:
                    self._send(batch)
            elif next_due is None or oldest + window < next_due:
                next_due = oldest + window
        if self.metrics is not None:
            self.metrics.webhooks_waiting.set(store.size())
            self.metrics.webhooks_unsaved.set(store.unsaved() + len(self._inbox))
        idle = not self._inbox and not self._senders
        if flushing and idle and not store.unsaved():
            self._drained.set()
        return None if next_due is None else max(0.0, next_due - now)

    def _arrival(self, app_id: str, event: Event, emitted: float) -> Arrival | None:
        """Route one emitted event to the lanes that want it; None if nothing needs it."""
        lanes = tuple(
            lane for lane, target in self._app_lanes.get(app_id, ()) if target_wants(target, event)
        )
        grace = self.settings.grace_period
        key = grace_key(event) if grace > 0 else None
        if key is None:
            if not lanes:
                return None
            dedupe = None
            if event["name"] == "cache_miss":
                # Pusher de-duplicates cache_miss: one per channel among those waiting.
                dedupe = f"cache_miss\0{event['channel']}"
            return Arrival(event, lanes, emitted, dedupe=dedupe)
        # Held and returning events go in even without a lane: the pair cancels as a pair.
        return Arrival(event, lanes, emitted, key, event["name"] in _HELD, emitted + grace)

    # --- delivery -----------------------------------------------------------------------------

    def _send(self, batch: Batch) -> None:
        """Start the sender of a batch, unless its lane has one (it cannot: one batch a lane)."""
        if batch.lane in self._lanes and batch.lane not in self._senders:
            self._senders[batch.lane] = gevent.spawn(self._deliver, batch)

    def _deliver(self, batch: Batch) -> None:
        """Send one batch to its target until a 2xx answer or `retry_for` runs out."""
        app, target = self._lanes[batch.lane]
        body = encode_body(batch)
        headers = {
            "User-Agent": f"ipe/{__version__} webhooks",
            **dict(target.headers),
            # Last, so nothing overrides them (the config refuses such headers anyway).
            "Content-Type": "application/json",
            "X-Pusher-Key": app.key,
            "X-Pusher-Signature": webhook_signature(app.secret, body),
        }
        settings = self.settings
        store = self.store
        # Doubling up to retry_backoff_max; the jitter spreads retries of many batches.
        backoff = Backoff(settings.retry_backoff, settings.retry_backoff_max, jitter=0.2)
        attempts = 0
        started = time.monotonic()

        def fields() -> dict[str, object]:  # for JSON logs (ipe.logs); never the signature
            return {
                "app_id": app.app_id,
                "url": safe_url(target.url),
                "events": len(batch.events),
                "attempts": attempts,
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
            }

        try:
            while True:
                attempts += 1
                began = time.monotonic()
                error = self._post(target.url, body, headers)
                self._tell_console(app.app_id, batch, target, error, attempts, began, False)
                if error is None:
                    if self.metrics is not None:
                        self.metrics.webhooks_sent.labels(app_id=app.app_id).inc()
                    log.debug(
                        "webhook delivered: app %s, %d event(s), %s",
                        app.app_id,
                        len(batch.events),
                        safe_url(target.url),
                        extra=fields(),
                    )
                    self._tell_console(app.app_id, batch, target, None, attempts, began, True)
                    break
                wait = backoff.next()
                if self._stopping.is_set():
                    if store.durable:
                        store.abandon(batch)  # another node (or this one restarted) resumes it
                        return
                    give_up = True  # the attempt after shutdown began was the last one
                else:
                    give_up = time.time() + wait > batch.created_ms / 1000 + settings.retry_for
                if give_up:
                    if self.metrics is not None:
                        self.metrics.webhooks_failed.labels(app_id=app.app_id).inc()
                    log.warning(
                        "webhook given up: app %s, %d event(s) to %s after %d attempt(s) "
                        "in %.1fs; last error: %s",
                        app.app_id,
                        len(batch.events),
                        safe_url(target.url),
                        attempts,
                        time.time() - batch.created_ms / 1000,
                        error,
                        extra=fields(),
                    )
                    self._tell_console(app.app_id, batch, target, error, attempts, began, True)
                    break
                log.info(
                    "webhook to %s failed (%s); attempt %d, next in %.1fs",
                    safe_url(target.url),
                    error,
                    attempts,
                    wait,
                    extra=fields(),
                )
                # Shutdown cuts the wait short for one last attempt.
                self._stopping.wait(wait)
                if not store.owns(batch):
                    log.info(
                        "webhook batch of lane %s taken over by another node; leaving it",
                        batch.lane,
                    )
                    return
            store.finish(batch)
        finally:
            self._senders.pop(batch.lane, None)
            self._wake.set()

    def _tell_console(
        self,
        app_id: str,
        batch: Batch,
        target: WebhookTarget,
        error: str | None,
        attempts: int,
        began: float,
        final: bool,
    ) -> None:
        """Report an attempt (`final`: the batch's outcome) to the console's tap."""
        tap = self.tap
        # Outcomes are kept while the console is on; attempts only go to a watched app's log.
        if (tap.deliveries is not None) if final else (app_id in tap.apps):
            latency = time.monotonic() - began
            url = safe_url(target.url)
            tap.webhook(app_id, batch.lane, url, len(batch.events), error, attempts, latency, final)

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> str | None:
        """POST once; None on a 2xx answer, else why not."""
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        timeout = self.settings.timeout
        try:
            # The socket timeout bounds each read; this bounds the whole attempt.
            with gevent.Timeout(timeout, _AttemptTimeout):
                with self._opener.open(request, timeout=timeout) as response:
                    response.read(65536)
            return None
        except urllib.error.HTTPError as exc:
            exc.close()
            return f"HTTP {exc.code}"
        except _AttemptTimeout:
            return f"no answer within {timeout:g}s"
        except urllib.error.URLError as exc:
            return str(exc.reason)
        except (OSError, HTTPException, ValueError) as exc:
            return str(exc) or type(exc).__name__
