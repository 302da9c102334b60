"""Apps stored in Redis (`app_manager: driver: redis`), read by every node, written by `ipe apps`.

Each app is the JSON of its config-file mapping (`{"app_id": ..., "key": ..., "secrets": [...],
"limits": {...}}`) in one hash, with a key -> id index beside it on the same slot. A writer
changes both in one transaction and then PUBLISHes on `apps_changed`; every node listens and
reads the apps again at once, so a change is served cluster-wide well within a second.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import gevent

from ipe.apps import AppSourceError
from ipe.config import AppConfig, ConfigError, Limits, parse_app
from ipe.redis import keys
from ipe.redis.link import REDIS_ERRORS, reconnect_backoff

log = logging.getLogger(__name__)


class RedisApps:
    """The apps hash: read as an `AppSource`, written by the `ipe apps` command."""

    name = "redis"
    enumerable = True

    def __init__(self, link: Any, limits: Limits) -> None:
        self.link = link  # a RedisLink: its client is made on first use
        prefix = link.prefix
        self.limits = limits
        self.hash = keys.apps(prefix)
        self.index = keys.app_keys(prefix)
        self.channel = keys.apps_changed(prefix)
        self._listener: gevent.Greenlet | None = None

    @property
    def client(self) -> Any:
        return self.link.client

    # --- reading ------------------------------------------------------------------------------

    def _parse(self, app_id: str, raw: bytes | str) -> AppConfig | None:
        try:
            return parse_app(json.loads(raw), self.limits, f"redis app {app_id}")
        except (ValueError, ConfigError) as exc:
            log.error("ignoring stored app %s: %s", app_id, exc)
            return None

    def documents(self) -> dict[str, dict[str, Any]]:
        """Every stored app as its mapping, by id."""
        try:
            stored = self.client.hgetall(self.hash)
        except REDIS_ERRORS as exc:
            raise AppSourceError(str(exc)) from exc
        return {_str(k): json.loads(v) for k, v in stored.items()}

    def fetch_all(self) -> tuple[AppConfig, ...]:
        """Every valid stored app."""
        try:
            stored = self.client.hgetall(self.hash)
        except REDIS_ERRORS as exc:
            raise AppSourceError(str(exc)) from exc
        apps = (self._parse(_str(k), v) for k, v in sorted(stored.items()))
        return tuple(app for app in apps if app is not None)

    def fetch(self, key: str | None = None, app_id: str | None = None) -> AppConfig | None:
        """The stored app with this key or id."""
        try:
            if app_id is None:
                found = self.client.hget(self.index, key)
                if found is None:
                    return None
                app_id = _str(found)
            raw = self.client.hget(self.hash, app_id)
        except REDIS_ERRORS as exc:
            raise AppSourceError(str(exc)) from exc
        app = None if raw is None else self._parse(app_id, raw)
        if app is not None and key is not None and app.key != key:
            return None  # the index was behind the app (cannot happen inside a transaction)
        return app

    def watch(self, changed: Callable[[], None]) -> None:
        """Listen on the change channel; call `changed()` for each announcement (and after a
        reconnect, since announcements made meanwhile were lost)."""
        if self._listener is None:
            self._listener = gevent.spawn(self._listen, changed)

    def _listen(self, changed: Callable[[], None]) -> None:
        backoff = reconnect_backoff()
        while True:
            pubsub = None
            try:
                pubsub = self.client.pubsub()
                pubsub.subscribe(self.channel)
                while True:
                    message = pubsub.get_message(timeout=5.0)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        backoff.reset()
                    changed()  # subscribed (again), or an announcement
            except REDIS_ERRORS as exc:
                log.debug("app change listener lost Redis (%s)", exc)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # closing a broken connection may fail in many ways
                        pass
            gevent.sleep(backoff.next())

    # --- writing (the `ipe apps` command) -----------------------------------------------------

    def put(self, document: dict[str, Any]) -> AppConfig:
        """Store one app (validated as the config file would be) and announce the change."""
        app = parse_app(document, self.limits, "app")
        for other_id, other in self.documents().items():
            if other_id != app.app_id and other.get("key") == app.key:
                raise ConfigError(f"app.key: {app.key!r} is already the key of app {other_id}")
        old = self.client.hget(self.hash, app.app_id)
        pipe = self.client.pipeline(transaction=True)
        if old is not None:
            old_key = json.loads(old).get("key")
            if old_key and old_key != app.key:
                pipe.hdel(self.index, old_key)
        pipe.hset(self.hash, app.app_id, json.dumps(document, sort_keys=True))
        pipe.hset(self.index, app.key, app.app_id)
        pipe.execute()
        self.client.publish(self.channel, app.app_id)
        return app

    def remove(self, app_id: str) -> bool:
        """Delete one app; False if there was none."""
        old = self.client.hget(self.hash, app_id)
        if old is None:
            return False
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self.hash, app_id)
        key = json.loads(old).get("key")
        if key:
            pipe.hdel(self.index, key)
        pipe.execute()
        self.client.publish(self.channel, app_id)
        return True


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
