"""Pusher's subscription counting: a channel's new subscriber count, told to its subscribers
and to the webhooks each time it changes, paced above 100 subscribers (protocol-notes.md §2.7, §7).

Only for apps with `subscription_count: true`, and never for presence channels (their count is
their members) or `#server-to-user-` channels. A count at most THRESHOLD goes out at once.
Above it a channel's counts go out at most once per INTERVAL: a change with no window open
goes out at once and opens one; changes within the window only mark it; when it ends, the
count as it is then (read from the presence store) goes out and the next window opens. A
window that saw no change closes, so only channels above the threshold that changed within
the last INTERVAL hold state here. Each node paces the changes made on it.

The event goes through the broker, so that subscribers on every node get it; a count of 0
has no subscriber left to tell, and goes to the webhooks only.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import gevent

from ipe import protocol
from ipe.hub import EVENT

if TYPE_CHECKING:
    from ipe.broker import Broker
    from ipe.config import AppConfig
    from ipe.presence import Presence
    from ipe.webhooks import Webhooks

log = logging.getLogger(__name__)

THRESHOLD = 100  # subscribers above which Pusher paces the counts...
INTERVAL = 5.0  # ...to one per this many seconds per channel


class _Window:
    """One channel's pacing window; `changed` if its count changed since the last send."""

    __slots__ = ("changed",)

    def __init__(self) -> None:
        self.changed = False


def counted(app: AppConfig, channel: str) -> bool:
    """True if changes of `channel`'s subscriber count are announced."""
    return (
        app.subscription_count
        and not protocol.is_presence(channel)
        and protocol.server_to_user_id(channel) is None
    )


class SubscriptionCounts:
    """Announces subscription counts; owns this process's pacing windows."""

    def __init__(
        self,
        presence: Presence,
        broker: Broker,
        webhooks: Webhooks,
        threshold: int = THRESHOLD,
        interval: float = INTERVAL,
    ) -> None:
        self.presence = presence
        self.broker = broker
        self.webhooks = webhooks
        self.threshold = threshold
        self.interval = interval
        self._windows: dict[tuple[str, str], _Window] = {}

    def changed(self, app: AppConfig, channel: str, count: int) -> None:
        """Announce `count`, the channel's subscriptions after a change; never blocks."""
        if not counted(app, channel):
            return
        key = (app.app_id, channel)
        if count > self.threshold:
            window = self._windows.get(key)
            if window is not None:
                window.changed = True  # the window's end sends the count as it is then
                return
            self._open(app, key)
        else:
            self._windows.pop(key, None)  # unpaced again: the open window ends quietly
        self._send(app, channel, count)

    def _open(self, app: AppConfig, key: tuple[str, str]) -> None:
        window = self._windows[key] = _Window()
        gevent.spawn_later(self.interval, self._close, app, key, window)

    def _close(self, app: AppConfig, key: tuple[str, str], window: _Window) -> None:
        """End a window: send the current count if it changed meanwhile, else forget it."""
        if self._windows.get(key) is not window:
            return  # the count fell to the threshold meanwhile and went out unpaced
        if not window.changed:
            del self._windows[key]
            return
        # Opened before the read, which may wait for Redis: a change meanwhile marks it.
        self._open(app, key)
        app_id, channel = key
        try:
            count = self.presence.subscription_count(app_id, channel)
            self._send(app, channel, count)
        except Exception:  # a greenlet of its own: nobody else would log it
            log.exception("sending the subscription count of %s failed", channel)

    def _send(self, app: AppConfig, channel: str, count: int) -> None:
        if count > 0:
            payload = protocol.subscription_count(channel, count)
            # Counts read on different nodes must end on the last one everywhere: they take
            # Redis's one order on every node (ordered), this one included.
            self.broker.publish(app.app_id, EVENT, channel, payload, ordered=True)
        self.webhooks.emit(
            app, {"name": "subscription_count", "channel": channel, "subscription_count": count}
        )
