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

from ipe import app_documents
from ipe.app_documents import NoSuchApp
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
            raise AppSourceError(f"cannot read the apps from Redis: {exc}") from exc
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

    # --- writing (the `ipe apps` command and the console) --------------------------------------
    # Every write reads the stored mapping, edits it (ipe.app_documents), validates the result
    # as the config file would be (`put`) and announces it. Redis failures raise
    # AppSourceError; an invalid result ConfigError; an unknown id NoSuchApp.

    def document(self, app_id: str) -> dict[str, Any]:
        """One stored app as its mapping; NoSuchApp if there is none."""
        try:
            raw = self.client.hget(self.hash, app_id)
        except REDIS_ERRORS as exc:
            raise AppSourceError(f"cannot read the apps from Redis: {exc}") from exc
        if raw is None:
            raise NoSuchApp(app_id)
        document = json.loads(raw)
        if not isinstance(document, dict):
            raise AppSourceError(f"stored app {app_id} is not a mapping")
        return document

    def put(self, document: dict[str, Any]) -> AppConfig:
        """Store one app (validated as the config file would be) and announce the change."""
        app = parse_app(document, self.limits, "app")
        for other_id, other in self.documents().items():
            if other_id != app.app_id and other.get("key") == app.key:
                raise ConfigError(f"app.key: {app.key!r} is already the key of app {other_id}")
        try:
            stored = json.dumps(document, sort_keys=True)
        except (TypeError, ValueError) as exc:  # e.g. a YAML date in a webhook header
            raise ConfigError(f"app: cannot be stored as JSON ({exc})") from None
        try:
            old = self.client.hget(self.hash, app.app_id)
            pipe = self.client.pipeline(transaction=True)
            if old is not None:
                old_key = json.loads(old).get("key")
                if old_key and old_key != app.key:
                    pipe.hdel(self.index, old_key)
            pipe.hset(self.hash, app.app_id, stored)
            pipe.hset(self.index, app.key, app.app_id)
            pipe.execute()
            self.client.publish(self.channel, app.app_id)
        except REDIS_ERRORS as exc:
            raise AppSourceError(f"cannot write to Redis: {exc}") from exc
        return app

    def add(self, document: dict[str, Any]) -> AppConfig:
        """Store a new app; ConfigError if its id is taken."""
        try:
            taken = self.client.hexists(self.hash, document.get("app_id"))
        except REDIS_ERRORS as exc:
            raise AppSourceError(f"cannot read the apps from Redis: {exc}") from exc
        except Exception:  # no usable id (None, a list...): parse_app in put names the key
            taken = False
        if taken:
            raise ConfigError(f"app {document['app_id']} exists already; use update")
        return self.put(document)

    def update(self, app_id: str, edit: Callable[[dict[str, Any]], Any]) -> AppConfig:
        """Apply `edit` to the stored app's mapping and store the result."""
        document = self.document(app_id)
        edit(document)
        if str(document.get("app_id")) != app_id:
            raise ConfigError("app.app_id: an app's id cannot change")
        return self.put(document)

    def set_enabled(self, app_id: str, enabled: bool) -> AppConfig:
        """Enable or disable one app (a disabled app's sockets are closed with 4003)."""
        return self.update(app_id, lambda document: document.__setitem__("enabled", enabled))

    def rotate_secret(self, app_id: str, secret: str | None = None) -> tuple[AppConfig, str]:
        """Add a new first secret (random unless given), keep the old ones; the new secret."""
        secret = secret or app_documents.new_secret()
        app = self.update(app_id, lambda document: app_documents.rotate(document, secret))
        return app, secret

    def drop_old_secrets(self, app_id: str) -> tuple[AppConfig, int]:
        """Keep only the current secret; how many old ones were dropped."""
        dropped = 0

        def edit(document: dict[str, Any]) -> None:
            nonlocal dropped
            dropped = app_documents.drop_old_secrets(document)

        return self.update(app_id, edit), dropped

    def remove(self, app_id: str) -> bool:
        """Delete one app (its sockets are closed with 4001); False if there was none."""
        try:
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
        except REDIS_ERRORS as exc:
            raise AppSourceError(f"cannot write to Redis: {exc}") from exc
        return True


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
