"""Node ownership in Redis: this node's heartbeat, its re-registration, and dead nodes' cleanup.

Every node refreshes `{prefix}:node:<id>` (expiring after `node_timeout`) every
`heartbeat_interval`. The janitor of every node looks, at the same pace, for nodes that hold a
share of an app (`RedisPresence.nodes`) but no heartbeat, and reaps them: one atomic script
per app removes the dead node's subscriptions, members and signed-in users, and only the
janitor whose script did it announces the resulting `member_removed`, watchlist `offline`,
subscription counts and webhooks, so they go out once.

When Redis comes back (restarted, or reachable again) or this node finds its own heartbeat
gone, the node writes its share back from memory (`RedisPresence.restore`). If Redis had
kept the old share or a janitor had reaped it, other nodes saw it, and the difference is
announced; if Redis had lost everything, nothing changed for anyone and nothing is sent.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import gevent

from ipe import protocol
from ipe.hub import EVENT, WATCH
from ipe.redis import keys
from ipe.redis.link import REDIS_ERRORS

if TYPE_CHECKING:
    from ipe.apps import Apps
    from ipe.broker import Broker
    from ipe.config import AppConfig, Config
    from ipe.metrics import Metrics
    from ipe.redis.link import RedisLink
    from ipe.redis.presence import Changes, RedisPresence
    from ipe.subscription_count import SubscriptionCounts
    from ipe.webhooks import Webhooks

log = logging.getLogger(__name__)

TOMBSTONE_SECONDS = 3600  # how long a reaped node can come back and have its return announced


class Janitor:
    """Heartbeats, restore after Redis trouble, and reaping of dead nodes, in one greenlet."""

    def __init__(
        self,
        config: Config,
        apps: Apps,
        link: RedisLink,
        presence: RedisPresence,
        broker: Broker,
        webhooks: Webhooks,
        metrics: Metrics,
        counts: SubscriptionCounts,
    ) -> None:
        assert config.redis is not None
        self.apps = apps  # follows reloads: the apps whose shares this node keeps and reaps
        self.link = link
        self.presence = presence
        self.broker = broker
        self.webhooks = webhooks
        self.metrics = metrics
        self.counts = counts
        self.interval = config.redis.heartbeat_interval
        self.timeout = config.redis.node_timeout
        self.key = keys.heartbeat(link.prefix, link.node)
        self._up_since = time.monotonic()
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        """Register for Redis recoveries and start the heartbeat loop (after fork)."""
        if self._greenlet is None:
            self.link.on_up(self.recover)
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        """Stop the loop; the heartbeat expires by itself and janitors clean what is left."""
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    # --- this node ----------------------------------------------------------------------------

    def _beat(self) -> bool:
        """Refresh the heartbeat; True if it was still there (nobody could think us dead)."""
        previous = self.link.client.set(
            self.key, str(time.time()), px=int(self.timeout * 1000), get=True
        )
        return previous is not None

    def recover(self) -> None:
        """Redis is reachable (again): heartbeat, then write this node's share back."""
        self._beat()
        self._up_since = time.monotonic()
        self.restore()

    def restore(self) -> None:
        """Re-register every app's share; announce what other nodes had not seen."""
        for app in self.apps.all:
            seen, changes = self.presence.restore(app.app_id)
            if not seen or not any(changes):
                continue
            log.info(
                "re-registered app %s: %s (%s had seen the old state)",
                app.app_id,
                _n(changes),
                seen,
            )
            if seen == "others":
                # Everyone lost Redis at once; our clients were told locally meanwhile. Other
                # nodes resubscribe on the same back-off as ours: wait for ours, so that
                # they are likely listening when the news goes out (Pub/Sub keeps nothing).
                self._wait_listening()
            self._announce(app, changes, here=seen == "everyone")

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + self.timeout
        while not self.broker.ready() and time.monotonic() < deadline:
            gevent.sleep(0.05)

    # --- the loop -----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            gevent.sleep(self.interval)
            if not self.link.up:
                continue
            try:
                if not self._beat():
                    log.warning(
                        "node %s: heartbeat was gone from Redis (restart or long outage); "
                        "re-registering",
                        self.link.node,
                    )
                    self._up_since = time.monotonic()
                    self.restore()
                # Right after Redis comes back every heartbeat may have expired: give the
                # other nodes one node_timeout to beat before judging them dead.
                if time.monotonic() - self._up_since >= self.timeout:
                    self.sweep()
            except REDIS_ERRORS as exc:
                self.link.mark_down(exc)
            except Exception:  # never let the janitor die: dead nodes would haunt forever
                log.exception("janitor pass failed")

    def sweep(self) -> None:
        """Reap every node that holds a share of one of our apps but no heartbeat."""
        alive: dict[str, bool] = {}
        prefix = self.link.prefix
        for app in self.apps.all:
            for node in self.presence.nodes(app.app_id):
                if node not in alive:
                    alive[node] = bool(self.link.client.exists(keys.heartbeat(prefix, node)))
                if alive[node]:
                    continue
                changes = self.presence.reap(app.app_id, node, TOMBSTONE_SECONDS)
                if any(changes):  # empty too when another janitor got there first
                    log.info("reaped dead node %s of app %s: %s", node, app.app_id, _n(changes))
                    self.metrics.nodes_reaped.inc()
                    self._announce(app, changes, here=True)
        self.metrics.janitor_sweeps.inc()

    # --- telling everyone ---------------------------------------------------------------------

    def _announce(self, app: AppConfig, changes: Changes, here: bool) -> None:
        """Publish member and watchlist events and queue webhooks for cluster-wide changes."""
        publish = self.broker.publish
        emit = self.webhooks.emit
        app_id = app.app_id
        for channel in changes.occupied:
            emit(app, {"name": "channel_occupied", "channel": channel})
        for channel, user_id, info, version in changes.added:
            payload = protocol.member_added(channel, user_id, info)
            publish(app_id, EVENT, channel, payload, None, here, version=version)
            emit(app, {"name": "member_added", "channel": channel, "user_id": user_id})
        for channel, user_id, version in changes.removed:
            payload = protocol.member_removed(channel, user_id)
            publish(app_id, EVENT, channel, payload, None, here, version=version)
            emit(app, {"name": "member_removed", "channel": channel, "user_id": user_id})
        for channel, count in changes.counts:
            self.counts.changed(app, channel, count)
        for channel in changes.vacated:
            emit(app, {"name": "channel_vacated", "channel": channel})
        for user_id in changes.online:
            publish(app_id, WATCH, user_id, b"online", None, here)
        for user_id in changes.offline:
            publish(app_id, WATCH, user_id, b"offline", None, here)


def _n(changes: Changes) -> str:
    """A one-line summary of changes for the log."""
    return ", ".join(f"{len(v)} {k}" for k, v in changes._asdict().items() if v) or "nothing"
