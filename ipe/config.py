"""Configuration: IPÊ's YAML format plus ipe's additions, as frozen dataclasses. Pure.

`${VAR}` and `${VAR:-default}` are expanded inside string values after parsing (never over the
raw text, so a `$` inside a secret stays as written). Unknown keys, missing required keys and
unset variables fail with a ConfigError naming the key.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml

from ipe import origins

DEFAULT_PORT = 8080
WEBHOOK_EVENT_TYPES = (
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
    "subscription_count",
)


class ConfigError(ValueError):
    """An invalid configuration; the message names the offending key."""


@dataclass(frozen=True)
class Limits:
    """Per-app limits; the defaults are Pusher's."""

    max_message_size: int = 10240
    max_presence_members: int = 100
    max_user_info_size: int = 1024
    max_user_id_length: int = 128
    max_channel_name_length: int = 200
    max_event_name_length: int = 200
    client_events_per_second: int = 10
    max_channels_per_event: int = 100
    max_batch_size: int = 10
    max_watchlist_size: int = 100
    cache_ttl: int = 1800
    # Quotas (ipe's; 0 = unlimited). With Redis they count the whole cluster.
    max_connections: int = 0
    max_subscriptions_per_connection: int = 1000
    max_backend_events_per_second: int = 0
    max_read_requests_per_second: int = 0


# Limits for which 0 means "no limit" rather than an invalid value.
UNLIMITED_ALLOWED = frozenset(
    {
        "max_connections",
        "max_subscriptions_per_connection",
        "max_backend_events_per_second",
        "max_read_requests_per_second",
    }
)


@dataclass(frozen=True)
class WebhookTarget:
    """One webhook receiver, optionally filtered by event type and channel-name prefix."""

    url: str
    event_types: tuple[str, ...] = WEBHOOK_EVENT_TYPES
    channel_prefix: str = ""
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class WebhookSettings:
    """How every app's webhooks are batched, delayed and retried (top-level `webhooks:`)."""

    batch_window: float = 0.25  # seconds a request waits for more events (Pusher: 250 ms)
    max_batch_size: int = 20  # events in one request (Pusher: 20)
    grace_period: float = 3.0  # seconds member_removed/channel_vacated wait for a return
    retry_for: float = 300.0  # seconds after its creation a request is still retried
    retry_backoff: float = 1.0  # first delay between attempts; doubles each time
    retry_backoff_max: float = 60.0  # cap of that delay
    timeout: float = 4.0  # seconds one attempt may take (Pusher asks for an answer in 4 s)
    queue_size: int = 10000  # events that may wait (with Redis: cluster-wide); more dropped
    flush_timeout: float = 3.0  # seconds spent at shutdown sending what still waits


@dataclass(frozen=True)
class AppConfig:
    """One Pusher application served by this instance."""

    app_id: str
    key: str
    secret: str = field(repr=False)  # signs webhooks; the first of `secrets:` when rotating
    # Older secrets still accepted while they rotate out (`secrets: [new, old]`).
    previous_secrets: tuple[str, ...] = field(default=(), repr=False)
    name: str = ""
    enabled: bool = True
    only_ssl: bool = False
    user_events: bool = True
    subscription_count: bool = False  # Pusher's "subscription counting" toggle (off there too)
    webhooks: tuple[WebhookTarget, ...] = ()
    limits: Limits = Limits()
    # Origins whose pages may open WebSockets ("https://*.example.com"); empty: any origin.
    allowed_origins: tuple[str, ...] = ()
    # Pusher's "authorized connections": a socket must sign in within signin_timeout seconds.
    authorized_connections: bool = False
    signin_timeout: float = 30.0

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret a signature may be made with, the current one first."""
        return (self.secret, *self.previous_secrets)


APP_MANAGER_DRIVERS = ("config", "redis", "sql", "http")


@dataclass(frozen=True)
class AppManagerConfig:
    """Where apps come from (top-level `app_manager:`): the config file, Redis, SQL or HTTP."""

    driver: str = "config"
    cache_ttl: float = 60.0  # seconds an app read from Redis, SQL or HTTP is kept
    miss_ttl: float = 5.0  # seconds an unknown key or id is remembered as unknown
    url: str = field(default="", repr=False)  # sql: database URL; http: the endpoint
    table: str = "apps"  # sql: the table, soketi's columns
    secret: str = field(default="", repr=False)  # http: signs every request
    timeout: float = 5.0  # seconds one look-up may take


@dataclass(frozen=True)
class SSLConfig:
    """IPÊ's optional second listener with TLS."""

    enabled: bool = False
    host: str = ":4433"
    key_file: str = ""
    cert_file: str = ""


@dataclass(frozen=True)
class RedisConfig:
    """Where the Redis engine is; absent means one process with the in-process broker."""

    host: str = "127.0.0.1"
    port: int = 6379
    password: str | None = field(default=None, repr=False)
    username: str | None = None
    db: int = 0
    tls: bool = False
    tls_verify: bool = True
    tls_ca_file: str = ""
    cluster: bool = False
    addrs: tuple[tuple[str, int], ...] = ()
    # Redis Sentinel: the master's name and the Sentinels to ask where it is (host/port unused).
    sentinel_master: str = ""
    sentinel_addrs: tuple[tuple[str, int], ...] = ()
    sentinel_password: str | None = field(default=None, repr=False)
    prefix: str = "ipe"
    # "auto": SPUBLISH/SSUBSCRIBE on a Redis Cluster whose servers have them (Redis 7+).
    sharded_pubsub: str = "auto"
    timeout: float = 2.0  # seconds for one command or connection attempt
    # Seconds of silence after which an idle connection is PINGed (half-open TCP detection),
    # and how often an unreachable Redis is probed.
    health_check_interval: float = 5.0
    # Each node refreshes its heartbeat key this often; a node whose key is older than
    # node_timeout is dead, and a janitor removes its members and subscriptions.
    heartbeat_interval: float = 5.0
    node_timeout: float = 15.0

    def describe(self) -> str:
        """Where Redis is, for logs and --check-config (never the password)."""
        if self.sentinel_master:
            where = ",".join(f"{h}:{p}" for h, p in self.sentinel_addrs)
            tls = " (TLS)" if self.tls else ""
            return (
                f"Redis master {self.sentinel_master!r} of the Sentinels at {where}{tls}, "
                f"db {self.db}, prefix {self.prefix}"
            )
        if self.cluster:
            where = ",".join(f"{h}:{p}" for h, p in self.addrs)
            return f"Redis Cluster at {where}{' (TLS)' if self.tls else ''}, prefix {self.prefix}"
        scheme = "rediss" if self.tls else "redis"
        return f"Redis at {scheme}://{self.host}:{self.port}/{self.db}, prefix {self.prefix}"


@dataclass(frozen=True)
class ConsoleUser:
    """One console login: `password` is plain text or a Werkzeug `pbkdf2:`/`scrypt:` hash."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class ConsoleConfig:
    """The debug console in the browser (top-level `console:`); off by default."""

    enabled: bool = False
    path: str = "/console"
    users: tuple[ConsoleUser, ...] = ()
    secret_key: str = field(default="", repr=False)
    session_hours: float = 12.0


@dataclass(frozen=True)
class Config:
    """The whole configuration of one ipe instance."""

    apps: tuple[AppConfig, ...]
    host: str = ""
    port: int = DEFAULT_PORT
    activity_timeout: int = 30
    pong_timeout: int = 30
    max_outbox_bytes: int = 1 << 20
    # Seconds a connection may take to send a whole HTTP request (request line, headers and
    # body; for TLS, the handshake too) before it is closed; and an idle keep-alive's wait.
    http_timeout: float = 10.0
    http_keepalive_timeout: float = 5.0
    # Connections still in the HTTP phase per process; beyond it the longest-waiting is closed.
    http_max_connections: int = 1000
    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed (addresses or networks).
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    http_session_timeout: float = 30.0  # seconds an HTTP-fallback session may go unpolled
    http_max_sessions: int = 10000  # HTTP-fallback sessions one process holds at most
    profiling: bool = False  # IPÊ's key: accepted, and ignored (config.yml.sample)
    ssl: SSLConfig = SSLConfig()
    redis: RedisConfig | None = None
    instance_id: str = ""
    log_level: str = "info"
    log_format: str = "text"
    webhooks: WebhookSettings = WebhookSettings()
    pid_file: str = ""  # where `ipe` writes its pid, for `ipe reload` (SIGHUP)
    app_manager: AppManagerConfig = AppManagerConfig()
    limits: Limits = Limits()  # the top-level limits: the base of apps from other managers
    console: ConsoleConfig = ConsoleConfig()
    drain_seconds: float = 10.0

    @property
    def stop_seconds(self) -> float:
        """Longest a SIGTERM'd process takes to exit: the drain, the last closing handshakes
        (3 s), the webhook flush, and a margin (gunicorn's graceful_timeout is this)."""
        return self.drain_seconds + 3.0 + self.webhooks.flush_timeout + 2.0

    def app_by_key(self, key: str) -> AppConfig | None:
        """The app whose public key is `key`."""
        for app in self.apps:
            if app.key == key:
                return app
        return None

    def app_by_id(self, app_id: str) -> AppConfig | None:
        """The app whose id is `app_id`."""
        for app in self.apps:
            if app.app_id == app_id:
                return app
        return None


# --- environment expansion ------------------------------------------------------------------

_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: Any, where: str, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):

        def repl(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{where}: environment variable {name} is not set")

        return _VAR_RE.sub(repl, value)
    if isinstance(value, dict):
        return {k: _expand(v, f"{where}.{k}" if where else str(k), env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{where}[{i}]", env) for i, v in enumerate(value)]
    return value


# --- typed readers ----------------------------------------------------------------------------

_REQUIRED = object()
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0", ""}


class _Section:
    """Reads typed keys out of one mapping and rejects the keys nobody read."""

    def __init__(self, raw: Any, where: str) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{where or 'config'}: must be a mapping")
        self.raw = raw
        self.where = where
        self.seen: set[str] = set()

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, default: Any = _REQUIRED) -> Any:
        self.seen.add(key)
        if key not in self.raw or self.raw[key] is None:
            if default is _REQUIRED:
                raise ConfigError(f"{self._path(key)}: missing required key")
            return default
        return self.raw[key]

    def str(self, key: str, default: Any = _REQUIRED) -> Any:
        value = self.get(key, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ConfigError(f"{self._path(key)}: must be a string")
        return str(value)

    def bool(self, key: str, default: Any = _REQUIRED) -> Any:
        value = self.get(key, default)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{self._path(key)}: must be true or false")

    def int(self, key: str, default: Any = _REQUIRED, minimum: int = 0) -> Any:
        value = self.get(key, default)
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise ConfigError(f"{self._path(key)}: must be an integer") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self._path(key)}: must be an integer")
        if value < minimum:
            raise ConfigError(f"{self._path(key)}: must be at least {minimum}")
        return value

    def float(self, key: str, default: Any = _REQUIRED, minimum: float = 0.0) -> Any:
        value = self.get(key, default)
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ConfigError(f"{self._path(key)}: must be a number") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{self._path(key)}: must be a number")
        if not value >= minimum:  # also rejects NaN
            raise ConfigError(f"{self._path(key)}: must be at least {minimum:g}")
        return float(value)

    def section(self, key: str) -> _Section:
        return _Section(self.get(key, None), self._path(key))

    def done(self) -> None:
        unknown = sorted(str(k) for k in self.raw if k not in self.seen)
        if unknown:
            raise ConfigError(f"{self._path(unknown[0])}: unknown key")


def parse_listen(value: str, where: str) -> tuple[str, int]:
    """`":8080"`, `"0.0.0.0:8080"` or `"8080"` → (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "", value
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"{where}: expected HOST:PORT, got {value!r}") from None
    if not 0 < number < 65536:
        raise ConfigError(f"{where}: port out of range in {value!r}")
    return host.strip("[]"), number


def _limits(section: _Section, base: Limits) -> Limits:
    values = {}
    for name in Limits.__dataclass_fields__:
        minimum = 0 if name in UNLIMITED_ALLOWED else 1
        values[name] = section.int(name, getattr(base, name), minimum=minimum)
    section.done()
    return Limits(**values)


def _webhook_settings(section: _Section) -> WebhookSettings:
    base = WebhookSettings()
    settings = WebhookSettings(
        batch_window=section.float("batch_window", base.batch_window),
        max_batch_size=section.int("max_batch_size", base.max_batch_size, minimum=1),
        grace_period=section.float("grace_period", base.grace_period),
        retry_for=section.float("retry_for", base.retry_for),
        retry_backoff=section.float("retry_backoff", base.retry_backoff, minimum=0.01),
        retry_backoff_max=section.float("retry_backoff_max", base.retry_backoff_max, minimum=0.01),
        timeout=section.float("timeout", base.timeout, minimum=0.1),
        queue_size=section.int("queue_size", base.queue_size, minimum=1),
        flush_timeout=section.float("flush_timeout", base.flush_timeout),
    )
    section.done()
    return settings


def _webhook_target(raw: Any, where: str) -> WebhookTarget:
    section = _Section(raw, where)
    url = section.str("url")
    types = section.get("event_types", list(WEBHOOK_EVENT_TYPES))
    if isinstance(types, str):
        types = [types]
    if not isinstance(types, list) or not types:
        raise ConfigError(f"{where}.event_types: must be a non-empty list")
    for kind in types:
        if kind not in WEBHOOK_EVENT_TYPES:
            raise ConfigError(f"{where}.event_types: unknown event type {kind!r}")
    headers = section.get("headers", {})
    if not isinstance(headers, dict):
        raise ConfigError(f"{where}.headers: must be a mapping")
    for name in headers:
        if str(name).lower().startswith("x-pusher-") or str(name).lower() == "content-type":
            raise ConfigError(f"{where}.headers: {name} is set by ipe and cannot be overridden")
    prefix = section.str("channel_prefix", "")
    section.done()
    return WebhookTarget(
        url=url,
        event_types=tuple(types),
        channel_prefix=prefix,
        headers=tuple((str(k), str(v)) for k, v in headers.items()),
    )


def _webhooks(raw: Any, where: str) -> tuple[WebhookTarget, ...]:
    if raw is None:
        return ()
    if isinstance(raw, list):
        return tuple(_webhook_target(item, f"{where}[{i}]") for i, item in enumerate(raw))
    # IPÊ's single-target form: {enabled, url}.
    section = _Section(raw, where)
    enabled = section.bool("enabled", False)
    url = section.str("url", "")
    section.done()
    if not enabled:
        return ()
    if not url:
        raise ConfigError(f"{where}.url: missing required key")
    return (WebhookTarget(url=url),)


def _allowed_origins(raw: Any, where: str) -> tuple[str, ...]:
    """The app's origin patterns, checked now; `*` alone (or nothing) allows any origin."""
    path = f"{where}.allowed_origins"
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise ConfigError(f"{path}: must be a list of origins")
    if "*" in raw:
        return ()
    for i, item in enumerate(raw):
        try:
            origins.parse_pattern(item)
        except ValueError as exc:
            raise ConfigError(f"{path}[{i}]: {exc}") from None
    return tuple(raw)


def _app(raw: Any, where: str, limits: Limits) -> AppConfig:
    section = _Section(raw, where)
    secrets = _secrets(section, where)
    app = AppConfig(
        app_id=section.str("app_id"),
        key=section.str("key"),
        secret=secrets[0],
        previous_secrets=secrets[1:],
        name=section.str("name", ""),
        enabled=section.bool("enabled", True),
        only_ssl=section.bool("only_ssl", False),
        user_events=section.bool("user_events", True),
        subscription_count=section.bool("subscription_count", False),
        webhooks=_webhooks(section.get("webhooks", None), f"{where}.webhooks"),
        limits=_limits(section.section("limits"), limits),
        allowed_origins=_allowed_origins(section.get("allowed_origins", None), where),
        authorized_connections=section.bool("authorized_connections", False),
        signin_timeout=section.float("signin_timeout", AppConfig.signin_timeout, minimum=0.1),
    )
    section.done()
    for name in ("app_id", "key"):
        if not getattr(app, name):
            raise ConfigError(f"{where}.{name}: must not be empty")
    return app


def parse_app(raw: Any, limits: Limits, where: str = "app") -> AppConfig:
    """One app from its YAML or JSON mapping (the config file's shape), over `limits`."""
    return _app(raw, where, limits)


def parse_apps(raw: list[Any], limits: Limits, where: str = "apps") -> tuple[AppConfig, ...]:
    """A list of apps; ids and keys must be unique."""
    apps = tuple(_app(item, f"{where}[{i}]", limits) for i, item in enumerate(raw))
    for name in ("app_id", "key"):
        values = [getattr(a, name) for a in apps]
        for i, value in enumerate(values):
            if value in values[:i]:
                raise ConfigError(f"{where}[{i}].{name}: duplicate value {value!r}")
    return apps


def _app_manager(section: _Section) -> AppManagerConfig:
    driver = section.str("driver", "config").lower()
    if driver not in APP_MANAGER_DRIVERS:
        raise ConfigError(f"app_manager.driver: must be one of {', '.join(APP_MANAGER_DRIVERS)}")
    manager = AppManagerConfig(
        driver=driver,
        cache_ttl=section.float("cache_ttl", AppManagerConfig.cache_ttl, minimum=0.1),
        miss_ttl=section.float("miss_ttl", AppManagerConfig.miss_ttl),
        url=section.str("url", ""),
        table=section.str("table", AppManagerConfig.table),
        secret=section.str("secret", ""),
        timeout=section.float("timeout", AppManagerConfig.timeout, minimum=0.1),
    )
    section.done()
    if driver in ("sql", "http") and not manager.url:
        raise ConfigError(f"app_manager.url: required by driver {driver}")
    if driver == "http" and not manager.secret:
        raise ConfigError("app_manager.secret: required by driver http (it signs each request)")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", manager.table):
        raise ConfigError("app_manager.table: must be a plain table name")
    return manager


def _secrets(section: _Section, where: str) -> tuple[str, ...]:
    """`secret: S`, or `secrets: [new, old, ...]` while a secret rotates out."""
    listed = section.get("secrets", None)
    if listed is None:
        secret = section.str("secret")
        if not secret:
            raise ConfigError(f"{where}.secret: must not be empty")
        return (secret,)
    if section.get("secret", None) is not None:
        raise ConfigError(f"{where}.secrets: give either secret or secrets, not both")
    if not isinstance(listed, list) or not listed:
        raise ConfigError(f"{where}.secrets: must be a non-empty list of strings")
    for i, secret in enumerate(listed):
        if not isinstance(secret, str) or not secret:
            raise ConfigError(f"{where}.secrets[{i}]: must be a non-empty string")
    if len(set(listed)) != len(listed):
        raise ConfigError(f"{where}.secrets: lists a secret twice")
    return tuple(listed)


def _redis_from_url(url: str, where: str) -> RedisConfig:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(f"{where}: expected a redis:// or rediss:// URL")
    db = 0
    if parts.path.strip("/"):
        try:
            db = int(parts.path.strip("/"))
        except ValueError:
            raise ConfigError(f"{where}: database in the URL must be a number") from None
    try:
        port = parts.port or 6379
    except ValueError:
        raise ConfigError(f"{where}: invalid port in the URL") from None
    query = dict(parse_qsl(parts.query))
    # redis-py's spelling, as Heroku's docs give it for their unverifiable certificates.
    verify = query.get("ssl_cert_reqs", "required").lower() not in ("none", "optional")
    return RedisConfig(
        host=parts.hostname or "127.0.0.1",
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        db=db,
        tls=parts.scheme == "rediss",
        tls_verify=verify,
    )


def _parse_addrs(value: str, where: str) -> tuple[tuple[str, int], ...]:
    addrs = []
    for item in value.replace(" ", "").split(","):
        if item:
            host, port = parse_listen(item, where)
            addrs.append((host or "127.0.0.1", port))
    return tuple(addrs)


_FROM_URL = ("host", "port", "username", "password", "db", "tls", "tls_verify")
_REDIS_VARIABLES = frozenset(
    {
        "REDIS_HOST",
        "REDIS_PORT",
        "REDIS_PASSWORD",
        "REDIS_DB",
        "REDIS_CLUSTER_MODE",
        "REDIS_TLS_ENABLED",
        "REDIS_TLS_SKIP_VERIFY",
        "REDIS_TLS_CA_FILE",
        "REDIS_PREFIX",
        "REDIS_ADDRS",
        "REDIS_SENTINEL_ADDRS",
        "REDIS_SENTINEL_MASTER",
        "REDIS_SENTINEL_PASSWORD",
    }
)


def _addrs(value: Any, where: str) -> tuple[tuple[str, int], ...]:
    """HOST:PORT addresses given as a list or one comma-separated string."""
    if isinstance(value, str):
        return _parse_addrs(value, where)
    if isinstance(value, list):
        return _parse_addrs(",".join(str(a) for a in value), where)
    raise ConfigError(f"{where}: must be a list of HOST:PORT")


def _sentinel(raw: Any) -> dict[str, Any]:
    """The `redis.sentinel:` section as RedisConfig fields (empty when absent)."""
    if raw is None:
        return {}
    section = _Section(raw, "redis.sentinel")
    fields = {
        "sentinel_master": section.str("master"),
        "sentinel_addrs": _addrs(section.get("addrs"), "redis.sentinel.addrs"),
        "sentinel_password": section.str("sentinel_password", None),
    }
    password = section.str("password", None)
    if password is not None:
        fields["password"] = password
    section.done()
    return fields


def _redis(raw: Any, env: Mapping[str, str]) -> RedisConfig | None:
    """The `redis:` section, then REDIS_URL, then IPÊ's REDIS_* variables on top of it."""
    section = _Section(raw, "redis")
    configured = bool(section.raw)
    url = section.str("url", "")
    redis = _redis_from_url(url, "redis.url") if url else RedisConfig()
    addrs = _addrs(section.get("addrs", []), "redis.addrs")
    sentinel = _sentinel(section.get("sentinel", None))
    sharded = section.get("sharded_pubsub", "auto")
    if isinstance(sharded, bool):
        sharded = "true" if sharded else "false"
    redis = replace(
        redis,
        host=section.str("host", redis.host),
        port=section.int("port", redis.port, minimum=1),
        username=section.str("username", redis.username),
        password=section.str("password", redis.password),
        db=section.int("db", redis.db),
        tls=section.bool("tls", redis.tls),
        tls_verify=section.bool("tls_verify", redis.tls_verify),
        tls_ca_file=section.str("tls_ca_file", ""),
        cluster=section.bool("cluster", redis.cluster),
        addrs=addrs,
        prefix=section.str("prefix", redis.prefix),
        sharded_pubsub=str(sharded).lower(),
        timeout=section.float("timeout", redis.timeout, minimum=0.1),
        health_check_interval=section.float(
            "health_check_interval", redis.health_check_interval, minimum=0.1
        ),
        heartbeat_interval=section.float(
            "heartbeat_interval", redis.heartbeat_interval, minimum=0.1
        ),
        node_timeout=section.float("node_timeout", redis.node_timeout, minimum=1),
    )
    section.done()
    redis = replace(redis, **sentinel)

    if env.get("REDIS_URL"):
        configured = True
        from_url = _redis_from_url(env["REDIS_URL"], "REDIS_URL")
        redis = replace(redis, **{name: getattr(from_url, name) for name in _FROM_URL})
    # Only the variables ipe reads count: other REDIS_* variables belong to other programs
    # (the redis image exports REDIS_VERSION, Heroku REDIS_TLS_URL) and must not turn Redis on.
    overrides = _Section({k: v for k, v in env.items() if k in _REDIS_VARIABLES and v}, "")
    if overrides.raw:
        configured = True
        redis = replace(
            redis,
            host=overrides.str("REDIS_HOST", redis.host),
            port=overrides.int("REDIS_PORT", redis.port, minimum=1),
            password=overrides.str("REDIS_PASSWORD", redis.password),
            db=overrides.int("REDIS_DB", redis.db),
            cluster=overrides.bool("REDIS_CLUSTER_MODE", redis.cluster),
            tls=overrides.bool("REDIS_TLS_ENABLED", redis.tls),
            tls_verify=not overrides.bool("REDIS_TLS_SKIP_VERIFY", not redis.tls_verify),
            tls_ca_file=overrides.str("REDIS_TLS_CA_FILE", redis.tls_ca_file),
            prefix=overrides.str("REDIS_PREFIX", redis.prefix),
            addrs=_parse_addrs(overrides.str("REDIS_ADDRS"), "REDIS_ADDRS")
            if "REDIS_ADDRS" in overrides.raw
            else redis.addrs,
            sentinel_master=overrides.str("REDIS_SENTINEL_MASTER", redis.sentinel_master),
            sentinel_addrs=_parse_addrs(
                overrides.str("REDIS_SENTINEL_ADDRS"), "REDIS_SENTINEL_ADDRS"
            )
            if "REDIS_SENTINEL_ADDRS" in overrides.raw
            else redis.sentinel_addrs,
            sentinel_password=overrides.str("REDIS_SENTINEL_PASSWORD", redis.sentinel_password),
        )
    if not configured:
        return None
    if redis.cluster and not redis.addrs:
        redis = replace(redis, addrs=((redis.host, redis.port),))
    if redis.tls_ca_file:
        redis = replace(redis, tls=True)
    if not redis.prefix or any(c in redis.prefix for c in "{}\n "):
        raise ConfigError("redis.prefix: must be non-empty, without braces or spaces")
    if redis.sharded_pubsub not in ("auto", "true", "false"):
        raise ConfigError("redis.sharded_pubsub: must be auto, true or false")
    if bool(redis.sentinel_master) != bool(redis.sentinel_addrs):
        raise ConfigError("redis.sentinel: needs both master and addrs")
    if redis.sentinel_master and redis.cluster:
        raise ConfigError("redis.sentinel: a Redis Cluster fails over by itself, without Sentinel")
    if redis.cluster and redis.db:
        raise ConfigError("redis.db: a Redis Cluster has only database 0")
    if redis.node_timeout < 2 * redis.heartbeat_interval:
        raise ConfigError("redis.node_timeout: must be at least twice redis.heartbeat_interval")
    return redis


def _trusted_proxies(value: Any) -> tuple[str, ...]:
    """`trusted_proxies`: a list (or comma-separated string) of addresses, networks or "*"."""
    if value is None:
        return Config.trusted_proxies
    if isinstance(value, str):
        value = [v for v in (part.strip() for part in value.split(",")) if v]
    if not isinstance(value, list):
        raise ConfigError("trusted_proxies: must be a list of addresses or networks")
    for item in value:
        if item == "*":  # every peer (a platform whose router is the only way in)
            continue
        try:
            ipaddress.ip_network(str(item), strict=False)
        except ValueError:
            raise ConfigError(f"trusted_proxies: not an address or network: {item!r}") from None
    return tuple(str(item) for item in value)


# First path segments of ipe's own routes, which the console must not shadow.
_RESERVED_PATHS = frozenset(
    {"apps", "app", "users", "health", "healthz", "ready", "readyz", "metrics"}
)


def _console(section: _Section, env: Mapping[str, str]) -> ConsoleConfig:
    enabled = section.bool("enabled", False)
    path = "/" + section.str("path", ConsoleConfig.path).strip("/")
    users_raw = section.get("users", [])
    secret_key = section.str("secret_key", env.get("IPE_SECRET_KEY", ""))
    hours = section.float("session_hours", ConsoleConfig.session_hours, minimum=0.001)
    section.done()
    if not isinstance(users_raw, list):
        raise ConfigError("console.users: must be a list of {username, password}")
    users = []
    for i, raw in enumerate(users_raw):
        user = _Section(raw, f"console.users[{i}]")
        users.append(ConsoleUser(username=user.str("username"), password=user.str("password")))
        user.done()
        for name in ("username", "password"):
            if enabled and not getattr(users[-1], name):
                raise ConfigError(f"console.users[{i}].{name}: must not be empty")
    if not enabled:
        return ConsoleConfig(path=path)
    if path == "/" or not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", path):
        raise ConfigError("console.path: must be a URL path such as /console")
    if path.split("/")[1] in _RESERVED_PATHS:
        raise ConfigError(f"console.path: {path} would hide ipe's own routes")
    if not secret_key:
        raise ConfigError(
            "console.secret_key: required when the console is enabled (set IPE_SECRET_KEY "
            "to a long random string)"
        )
    if len(secret_key) < 16:
        raise ConfigError("console.secret_key: must be at least 16 characters")
    if not users:
        raise ConfigError("console.users: at least one user is required when enabled")
    return ConsoleConfig(
        enabled=True,
        path=path,
        users=tuple(users),
        secret_key=secret_key,
        session_hours=hours,
    )


def _log_format(value: str, env: Mapping[str, str]) -> str:
    # $IPE_LOG_FORMAT wins over the file, as $IPE_LOG_LEVEL does in the cli.
    fmt = (env.get("IPE_LOG_FORMAT") or value).strip().lower()
    if fmt not in ("text", "json"):
        where = "IPE_LOG_FORMAT" if env.get("IPE_LOG_FORMAT") else "log_format"
        raise ConfigError(f"{where}: must be text or json")
    return fmt


def parse(raw: Any, env: Mapping[str, str] | None = None) -> Config:
    """Build a Config from parsed YAML, expanding `${VAR}` from `env` (default os.environ)."""
    env = os.environ if env is None else env
    raw = _expand(raw, "", env)
    top = _Section(raw, "")
    host, port = parse_listen(top.str("host", f":{DEFAULT_PORT}"), "host")
    ssl = top.section("ssl")
    ssl_config = SSLConfig(
        enabled=ssl.bool("enabled", False),
        host=ssl.str("host", SSLConfig.host),
        key_file=ssl.str("key_file", ""),
        cert_file=ssl.str("cert_file", ""),
    )
    ssl.done()
    if ssl_config.enabled:
        parse_listen(ssl_config.host, "ssl.host")
        for name in ("key_file", "cert_file"):
            if not getattr(ssl_config, name):
                raise ConfigError(f"ssl.{name}: required when ssl.enabled is true")
    limits = _limits(top.section("limits"), Limits())
    manager = _app_manager(top.section("app_manager"))
    apps_raw = top.get("apps", [] if manager.driver != "config" else _REQUIRED)
    if not isinstance(apps_raw, list) or (not apps_raw and manager.driver == "config"):
        raise ConfigError("apps: must be a non-empty list")
    apps = parse_apps(apps_raw, limits, "apps")
    config = Config(
        apps=apps,
        host=host,
        port=port,
        activity_timeout=top.int("activity_timeout", Config.activity_timeout, minimum=1),
        pong_timeout=top.int("pong_timeout", Config.pong_timeout, minimum=1),
        max_outbox_bytes=top.int("max_outbox_bytes", Config.max_outbox_bytes, minimum=1024),
        http_timeout=top.float("http_timeout", Config.http_timeout, minimum=0.1),
        http_keepalive_timeout=top.float(
            "http_keepalive_timeout", Config.http_keepalive_timeout, minimum=0.1
        ),
        http_max_connections=top.int(
            "http_max_connections", Config.http_max_connections, minimum=1
        ),
        trusted_proxies=_trusted_proxies(top.get("trusted_proxies", None)),
        http_session_timeout=top.float(
            "http_session_timeout", Config.http_session_timeout, minimum=1.0
        ),
        http_max_sessions=top.int("http_max_sessions", Config.http_max_sessions, minimum=1),
        profiling=top.bool("profiling", False),
        ssl=ssl_config,
        redis=_redis(top.get("redis", None), env),
        instance_id=top.str("instance_id", env.get("IPE_INSTANCE_ID", "")),
        log_level=top.str("log_level", env.get("IPE_LOG_LEVEL", "info")).lower(),
        log_format=_log_format(top.str("log_format", "text"), env),
        webhooks=_webhook_settings(top.section("webhooks")),
        drain_seconds=top.float("drain_seconds", Config.drain_seconds),
        pid_file=top.str("pid_file", env.get("IPE_PID_FILE", "")),
        app_manager=manager,
        limits=limits,
        console=_console(top.section("console"), env),
    )
    top.done()
    if manager.driver == "redis" and config.redis is None:
        raise ConfigError("app_manager.driver: redis needs the redis: section (or REDIS_URL)")
    return config


def load(path: str, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the YAML file at `path`."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        # One line, as every config error is: PyYAML's own message spans several.
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"{path}: invalid YAML{at}: {problem}") from None
    return parse(raw, env)
