"""The apps this process serves right now: found by key or id, replaced when they change.

`State.apps` is the one owner of the current set. Code that must follow runtime changes (the
handshake, REST, sign-in and channel authorization, the janitor) asks it each time; a
connection keeps the `AppConfig` it was opened with, so a changed app's new settings and limits
apply to new connections and requests.

The set comes from the config file (replaced on reload), or from an `AppSource` (Redis, SQL,
HTTP: `ipe.app_managers`). Answers of a source are cached: an enumerable source (Redis, SQL) is
read whole every `cache_ttl` and whenever it says it changed; a source that can only be asked
for one app (HTTP) is asked for each key or id on first use, and its known apps again every
`cache_ttl`. An unknown key or id is remembered as unknown for `miss_ttl`, and concurrent
look-ups of one key share one request, so a burst of connections costs one look-up per app. A
source that fails leaves the cached apps served.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import gevent
import gevent.event

from ipe.config import AppConfig

log = logging.getLogger(__name__)

MAX_MISSES = 10000  # unknown keys/ids remembered; a client can make up any number of them
FAILURE_LOG_INTERVAL = 30.0  # seconds between two log lines about a failing source


class AppSourceError(Exception):
    """The source of apps could not be read (unreachable, or it answered nonsense)."""


class AppSource(Protocol):
    """Where apps come from when not from the config file."""

    name: str
    enumerable: bool  # fetch_all() works

    def fetch_all(self) -> tuple[AppConfig, ...]:
        """Every app (enumerable sources only); raises AppSourceError."""
        ...

    def fetch(self, key: str | None = None, app_id: str | None = None) -> AppConfig | None:
        """The app with this key or id, or None; raises AppSourceError."""
        ...

    def watch(self, changed: Callable[[], None]) -> None:
        """Call `changed()` whenever the source knows its apps changed (may do nothing)."""
        ...


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

    def __init__(
        self,
        apps: Iterable[AppConfig],
        source: AppSource | None = None,
        cache_ttl: float = 60.0,
        miss_ttl: float = 5.0,
    ) -> None:
        self.source = source
        self.cache_ttl = cache_ttl
        self.miss_ttl = miss_ttl
        self._listeners: list[Callable[[AppChanges], None]] = []
        self._misses: dict[tuple[str, str], float] = {}  # ("key"|"id", value) -> until
        self._inflight: dict[tuple[str, str], gevent.event.AsyncResult] = {}
        self._refresh = gevent.event.Event()
        self._refresher: gevent.Greenlet | None = None
        self._failed_since: float | None = None
        self._failure_logged = -FAILURE_LOG_INTERVAL
        self.loaded = source is None  # False until an enumerable source was read once
        self._set(tuple(apps))

    def _set(self, apps: tuple[AppConfig, ...]) -> None:
        # Two new dicts swapped in at once: a reader never sees half a replacement.
        self._by_key = {app.key: app for app in apps}
        self._by_id = {app.app_id: app for app in apps}
        self.all = apps

    # --- look-ups -----------------------------------------------------------------------------

    def by_key(self, key: str) -> AppConfig | None:
        """The app whose public key is `key`."""
        app = self._by_key.get(key)
        if app is None and self.source is not None:
            return self._look_up("key", key)
        return app

    def by_id(self, app_id: str) -> AppConfig | None:
        """The app whose id is `app_id`."""
        app = self._by_id.get(app_id)
        if app is None and self.source is not None:
            return self._look_up("id", app_id)
        return app

    def current(self, app: AppConfig) -> AppConfig:
        """`app` as it is now (its secrets may have rotated since a socket connected with it)."""
        now = self._by_id.get(app.app_id)
        return now if now is not None and now.key == app.key else app

    def _look_up(self, kind: str, value: str) -> AppConfig | None:
        """Ask the source for an app not in the set: once per key at a time, misses cached."""
        what = (kind, value)
        until = self._misses.get(what)
        if until is not None:
            if until > time.monotonic():
                return None
            del self._misses[what]
        waiting = self._inflight.get(what)
        if waiting is not None:
            return waiting.get()  # type: ignore[no-any-return]
        result = gevent.event.AsyncResult()
        self._inflight[what] = result
        app = None
        try:
            assert self.source is not None
            app = self.source.fetch(**{"key" if kind == "key" else "app_id": value})
            self._succeeded()
        except AppSourceError as exc:
            self._failed(exc)
        except Exception as exc:  # a broken source must cost a look-up, never the caller
            log.exception("app source %s failed", self.source.name if self.source else "?")
            self._failed(exc)
        finally:
            del self._inflight[what]
            result.set(app)
        if app is None:
            if len(self._misses) >= MAX_MISSES:
                self._misses.pop(next(iter(self._misses)))  # the oldest
            self._misses[what] = time.monotonic() + self.miss_ttl
            return None
        self._merge(app)
        return app

    def _merge(self, app: AppConfig) -> None:
        others = tuple(a for a in self.all if a.app_id != app.app_id and a.key != app.key)
        self.replace((*others, app))

    # --- changes ------------------------------------------------------------------------------

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

    def invalidate(self) -> None:
        """The source changed: read it again now, and forget what was unknown."""
        self._misses.clear()
        self._refresh.set()

    # --- the source ---------------------------------------------------------------------------

    def start(self) -> None:
        """Read the source now and every cache_ttl (once per process, after fork)."""
        if self.source is not None and self._refresher is None:
            self.source.watch(self.invalidate)
            self._refresher = gevent.spawn(self._refresh_forever)

    def stop(self) -> None:
        """Stop reading the source."""
        if self._refresher is not None:
            self._refresher.kill(block=False)
            self._refresher = None

    def ready(self) -> bool:
        """False until an enumerable source was read once (nothing to serve before)."""
        return self.loaded

    def status(self) -> str:
        """"ok", or why the cached apps are being served."""
        if self._failed_since is None:
            return "ok"
        return f"app source unreachable for {time.monotonic() - self._failed_since:.0f}s"

    def _refresh_forever(self) -> None:
        while True:
            ok = self.reread()
            # Until the first read works, try again soon; then every cache_ttl, or at once when
            # the source says it changed.
            self._refresh.wait(self.cache_ttl if ok or self.loaded else min(1.0, self.cache_ttl))
            self._refresh.clear()

    def reread(self) -> bool:
        """Read the source again and serve what it says; False (old apps kept) if it fails."""
        source = self.source
        assert source is not None
        try:
            if source.enumerable:
                apps = source.fetch_all()
            else:
                apps = tuple(
                    app
                    for app in (source.fetch(app_id=known.app_id) for known in self.all)
                    if app is not None
                )
        except Exception as exc:
            if not isinstance(exc, AppSourceError):
                log.exception("app source %s failed", source.name)
            self._failed(exc)
            return False
        self._succeeded()
        changes = self.replace(apps)
        if changes:
            log.info("apps from %s: %s", source.name, changes.summary())
        self.loaded = True
        return True

    def _succeeded(self) -> None:
        if self._failed_since is not None:
            log.info("app source %s answers again", self.source.name if self.source else "?")
        self._failed_since = None

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._failed_since is None:
            self._failed_since = now
        if now - self._failure_logged >= FAILURE_LOG_INTERVAL:
            self._failure_logged = now
            log.warning(
                "app source %s failed (%s); serving the %d cached app(s)",
                self.source.name if self.source else "?",
                exc,
                len(self.all),
            )
