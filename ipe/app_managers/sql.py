"""Apps from a SQL table (`app_manager: driver: sql`), in soketi's layout, through SQLAlchemy.

A soketi user points ipe at the same table unchanged. Columns (the first ten required, -1
meaning unlimited): `id`, `key`, `secret`, `max_connections`, `enable_client_messages`,
`enabled`, `max_backend_events_per_sec`, `max_client_events_per_sec`, `max_read_req_per_sec`,
`webhooks` (JSON, soketi's shape), and optionally `max_presence_members_per_channel`,
`max_presence_member_size_in_kb`, `max_channel_name_length`, `max_event_channels_at_once`,
`max_event_name_length`, `max_event_payload_in_kb`, `max_event_batch_size`,
`enable_user_authentication`.

SQLAlchemy and the drivers are the optional extra `ipe[sql]`. Use pure-Python drivers
(`sqlite:///`, `postgresql+pg8000://`, `mysql+pymysql://`): they talk through gevent's sockets,
so a slow database holds only the greenlet that asked, never the event loop.
"""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from typing import Any

from ipe.apps import AppSourceError
from ipe.config import (
    WEBHOOK_EVENT_TYPES,
    AppConfig,
    AppManagerConfig,
    ConfigError,
    Limits,
    parse_app,
)

log = logging.getLogger(__name__)

# soketi column -> (ipe limit, multiplier): the per-app limits a row may set.
_LIMITS = {
    "max_connections": ("max_connections", 1),
    "max_backend_events_per_sec": ("max_backend_events_per_second", 1),
    "max_client_events_per_sec": ("client_events_per_second", 1),
    "max_read_req_per_sec": ("max_read_requests_per_second", 1),
    "max_presence_members_per_channel": ("max_presence_members", 1),
    "max_presence_member_size_in_kb": ("max_user_info_size", 1024),
    "max_channel_name_length": ("max_channel_name_length", 1),
    "max_event_channels_at_once": ("max_channels_per_event", 1),
    "max_event_name_length": ("max_event_name_length", 1),
    "max_event_payload_in_kb": ("max_message_size", 1024),
    "max_event_batch_size": ("max_batch_size", 1),
}
# Limits where 0 means "no limit" (the quotas); elsewhere soketi's -1 becomes a cap no one
# reaches.
_ZERO_IS_UNLIMITED = {
    "max_connections",
    "max_backend_events_per_second",
    "max_read_requests_per_second",
}
_NO_LIMIT = 1_000_000_000
_REQUIRED = ("id", "key", "secret", "enable_client_messages", "enabled")


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "t", "yes", "on")
    return bool(value)


def _webhooks(raw: Any) -> list[dict[str, Any]]:
    """soketi's webhooks JSON -> ipe's targets (event_types kept, name-prefix filter kept)."""
    if raw in (None, ""):
        return []
    hooks = json.loads(raw) if isinstance(raw, str | bytes) else raw
    if not isinstance(hooks, list):
        raise ValueError("webhooks: must be a JSON list")
    targets = []
    for hook in hooks:
        if not isinstance(hook, dict) or not hook.get("url"):
            raise ValueError("webhooks: every item needs a url")
        target: dict[str, Any] = {"url": hook["url"]}
        types = [t for t in hook.get("event_types") or [] if t in WEBHOOK_EVENT_TYPES]
        if types:
            target["event_types"] = types
        prefix = (hook.get("filter") or {}).get("channel_name_starts_with")
        if prefix:
            target["channel_prefix"] = prefix
        if hook.get("headers"):
            target["headers"] = hook["headers"]
        targets.append(target)
    return targets


def row_to_document(row: dict[str, Any]) -> dict[str, Any]:
    """One soketi row -> the config-file mapping of the app."""
    missing = [name for name in _REQUIRED if row.get(name) is None]
    if missing:
        raise ValueError(f"column {missing[0]} is required")
    known = {f.name for f in fields(Limits)}
    limits: dict[str, int] = {}
    for column, (name, unit) in _LIMITS.items():
        value = row.get(column)
        if value is None or name not in known:
            continue
        value = int(value)
        if value < 0:
            value = 0 if name in _ZERO_IS_UNLIMITED else _NO_LIMIT
        elif value == 0 and name not in _ZERO_IS_UNLIMITED:
            continue  # soketi's 0 on a size or count: keep ipe's default rather than refuse all
        limits[name] = value * unit if value < _NO_LIMIT else value
    document: dict[str, Any] = {
        "app_id": str(row["id"]),
        "key": str(row["key"]),
        "secret": str(row["secret"]),
        "enabled": _flag(row["enabled"]),
        "user_events": _flag(row["enable_client_messages"]),
        "webhooks": _webhooks(row.get("webhooks")),
        "limits": limits,
    }
    if row.get("enable_user_authentication") is not None and "authorized_connections" in {
        f.name for f in fields(AppConfig)
    }:
        document["authorized_connections"] = _flag(row["enable_user_authentication"])
    return document


class SqlApps:
    """An `AppSource` over a SQL table with soketi's columns."""

    name = "sql"
    enumerable = True

    def __init__(self, manager: AppManagerConfig, limits: Limits) -> None:
        try:
            import sqlalchemy
        except ImportError:
            raise ConfigError(
                'app_manager.driver: sql needs SQLAlchemy: pip install "ipe[sql]"'
            ) from None
        self.sa = sqlalchemy
        self.limits = limits
        self.engine = sqlalchemy.create_engine(
            manager.url, pool_pre_ping=True, pool_recycle=300, future=True
        )
        self.timeout = manager.timeout
        self.table = sqlalchemy.table(manager.table)
        self._columns: Any = None

    def _select(self) -> Any:
        # The columns are read from the database once: optional ones may be absent.
        if self._columns is None:
            table = self.sa.Table(self.table.name, self.sa.MetaData(), autoload_with=self.engine)
            self._columns = table
        return self.sa.select(self._columns)

    def _rows(self, where: Any = None) -> list[dict[str, Any]]:
        try:
            query = self._select()
            if where is not None:
                query = query.where(where(self._columns.c))
            with self.engine.connect() as connection:
                return [dict(row._mapping) for row in connection.execute(query)]
        except self.sa.exc.SQLAlchemyError as exc:
            raise AppSourceError(f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None

    def _app(self, row: dict[str, Any]) -> AppConfig | None:
        try:
            return parse_app(row_to_document(row), self.limits, f"sql app {row.get('id')}")
        except (ValueError, ConfigError) as exc:
            log.error("ignoring app row %s: %s", row.get("id"), exc)
            return None

    def fetch_all(self) -> tuple[AppConfig, ...]:
        """Every valid row."""
        apps = (self._app(row) for row in self._rows())
        return tuple(app for app in apps if app is not None)

    def fetch(self, key: str | None = None, app_id: str | None = None) -> AppConfig | None:
        """The row with this key or id."""
        if key is not None:
            rows = self._rows(lambda c: c.key == key)
        else:
            rows = self._rows(lambda c: c.id == app_id)
        return self._app(rows[0]) if rows else None

    def watch(self, changed: Any) -> None:
        """Nothing to watch: the table is read again every cache_ttl."""
