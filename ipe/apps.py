"""The apps this process serves right now: found by key or id, replaced when the config reloads.

`State.apps` is the one owner of the current set. Code that must follow runtime changes (the
handshake, REST, sign-in and channel authorization, the janitor) asks it each time; a
connection keeps the `AppConfig` it was opened with, so a changed app's new settings and limits
apply to new connections and requests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ipe.config import AppConfig


@dataclass(frozen=True)
class AppChanges:
    """What a replacement did, by app: the lists hold the apps as they are after it."""

    added: tuple[AppConfig, ...] = ()
    changed: tuple[AppConfig, ...] = ()
    disabled: tuple[AppConfig, ...] = ()
    removed: tuple[AppConfig, ...] = ()  # as they were before (they are gone)

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.disabled or self.removed)

    def summary(self) -> str:
        """A one-line description for the log."""
        parts = [
            f"{name} {', '.join(a.app_id for a in apps)}"
            for name, apps in (
                ("added", self.added),
                ("changed", self.changed),
                ("disabled", self.disabled),
                ("removed", self.removed),
            )
            if apps
        ]
        return "; ".join(parts) or "no app changed"


def diff(old: Iterable[AppConfig], new: Iterable[AppConfig]) -> AppChanges:
    """Compare two sets of apps by app id."""
    before = {app.app_id: app for app in old}
    after = {app.app_id: app for app in new}
    added, changed, disabled = [], [], []
    for app_id, app in after.items():
        previous = before.get(app_id)
        if previous is None:
            added.append(app)
        elif previous != app:
            if previous.enabled and not app.enabled:
                disabled.append(app)
            else:
                changed.append(app)
    removed = [app for app_id, app in before.items() if app_id not in after]
    return AppChanges(tuple(added), tuple(changed), tuple(disabled), tuple(removed))


class Apps:
    """The current apps, indexed by key and by id (dict look-ups on every handshake)."""

    def __init__(self, apps: Iterable[AppConfig]) -> None:
        self._listeners: list[Callable[[AppChanges], None]] = []
        self._set(tuple(apps))

    def _set(self, apps: tuple[AppConfig, ...]) -> None:
        # Two new dicts swapped in at once: a reader never sees half a replacement.
        self._by_key = {app.key: app for app in apps}
        self._by_id = {app.app_id: app for app in apps}
        self.all = apps

    def by_key(self, key: str) -> AppConfig | None:
        """The app whose public key is `key`."""
        return self._by_key.get(key)

    def by_id(self, app_id: str) -> AppConfig | None:
        """The app whose id is `app_id`."""
        return self._by_id.get(app_id)

    def current(self, app: AppConfig) -> AppConfig:
        """`app` as it is now (its secrets may have rotated since a socket connected with it)."""
        now = self._by_id.get(app.app_id)
        return now if now is not None and now.key == app.key else app

    def on_change(self, listener: Callable[[AppChanges], None]) -> None:
        """Call `listener(changes)` after every replacement that changed something."""
        self._listeners.append(listener)

    def replace(self, apps: Iterable[AppConfig]) -> AppChanges:
        """Serve `apps` from now on; tell the listeners what changed."""
        apps = tuple(apps)
        changes = diff(self.all, apps)
        self._set(apps)
        if changes:
            for listener in self._listeners:
                listener(changes)
        return changes
