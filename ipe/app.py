"""The application factory: builds the per-process State and the WSGI app around it."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import gevent
from flask import Flask, Response, jsonify

from ipe import config as config_module
from ipe import protocol, session
from ipe.apps import AppChanges, Apps
from ipe.broker import Broker, LocalBroker
from ipe.cache import Cache, InMemoryCache
from ipe.config import Config
from ipe.connection import CLOSE_WAIT
from ipe.console.tap import Tap
from ipe.hub import Hub
from ipe.metrics import CONTENT_TYPE, Metrics
from ipe.presence import InMemoryPresence, Presence
from ipe.quotas import Quotas
from ipe.subscription_count import SubscriptionCounts
from ipe.webhooks import Webhooks

if TYPE_CHECKING:
    from ipe.rest_wsgi import Answer, LeanRest

log = logging.getLogger(__name__)


@dataclass
class State:
    """Everything one ipe process owns; built once by `create_app`."""

    config: Config
    apps: Apps
    hub: Hub
    broker: Broker
    presence: Presence
    cache: Cache
    webhooks: Webhooks
    metrics: Metrics
    counts: SubscriptionCounts
    quotas: Quotas
    draining: bool = False
    http: Any = None  # ipe.http_transport.HttpSessions: pusher-js's HTTP fallback sessions
    # ipe.redis.http_routing.HttpRouter: those sessions' requests that reach another process
    http_router: Any = None
    redis: Any = None  # ipe.redis.link.RedisLink when nodes share Redis
    janitor: Any = None  # ipe.redis.janitor.Janitor, with it
    tap: Tap = field(default_factory=Tap)  # what the console sees; idle unless it watches
    console: Any = None  # ipe.console.service.Console when the console is enabled

    @property
    def handlers_never_block(self) -> bool:
        """True when message handlers touch only this process's memory (no Redis round trips),
        so that they may run inside the event loop's I/O callbacks."""
        return self.redis is None

    @property
    def rest_never_blocks(self) -> bool:
        """True when a lean REST route touches only this process's memory: no Redis, and
        apps from the config (an app manager may be asked over the network), so that it may
        be answered inside the event loop's I/O callbacks (`ipe.http_server`)."""
        return self.handlers_never_block and self.apps.source is None

    def start(self) -> None:
        """Start background work: liveness checks, Redis, broker listener, webhook sender."""
        self.hub.start()
        self.http.start()
        if self.http_router is not None:
            self.http_router.start()
        self.apps.start()
        gevent.spawn(self._export_forever)
        if self.janitor is not None:
            self.janitor.start()
        if self.redis is not None:
            self.redis.start()
        self.broker.start()
        self.webhooks.start()
        if self.console is not None:
            self.console.start()

    def shutdown(self, after_drain: Callable[[], None] | None = None) -> None:
        """Drain: /ready answers 503 and new sockets are refused at once, open sockets are
        told to reconnect elsewhere (4200) in batches over `drain_seconds`; then
        `after_drain` (stop listening), webhooks flushed, background work stopped."""
        self.draining = True
        if self.console is not None:
            self.console.stop()  # end the console's streams: they would hold the server open
        log.info("draining %d connection(s) over %gs", self.hub.count(), self.config.drain_seconds)
        self.hub.drain(
            protocol.GENERIC_RECONNECT, "Server is shutting down", self.config.drain_seconds
        )
        # Sessions end in their own greenlets; wait (bounded: unanswered closes are dropped
        # after CLOSE_WAIT) so that their member_removed/channel_vacated reach the webhooks.
        deadline = time.monotonic() + CLOSE_WAIT + 0.5
        while self.hub.count() and time.monotonic() < deadline:
            gevent.sleep(0.05)
        if after_drain is not None:
            after_drain()
        self.webhooks.stop()
        self.http.stop()
        if self.http_router is not None:
            self.http_router.stop()
        self.apps.stop()
        self.broker.stop()
        if self.janitor is not None:
            self.janitor.stop()
        self.hub.stop()

    def reload(self, path: str | None = None) -> AppChanges | None:
        """Re-read the config file and serve its apps; None (and one log line) if invalid.

        Sockets of unchanged apps are not touched; a disabled app's are closed with 4003 and a
        removed app's with 4001. Settings that are bound at start (listeners, Redis, the
        webhook schedule) keep their old values until a restart.
        """
        path = path or config_path()
        try:
            new = config_module.load(path)
        except config_module.ConfigError as exc:
            log.error("reload refused, the running config stays: %s", exc)
            return None
        fixed = [
            name
            for name in (
                "host",
                "port",
                "ssl",
                "redis",
                "instance_id",
                "webhooks",
                "http_timeout",  # these three are the listeners' (ipe.http_server)
                "http_keepalive_timeout",
                "http_max_connections",
                "console",
            )
            if getattr(new, name) != getattr(self.config, name)
        ]
        if fixed:
            log.warning("reload: %s changed; that takes a restart", ", ".join(fixed))
        if new.app_manager != self.config.app_manager:
            log.warning("reload: app_manager changed; that takes a restart")
            new = replace(new, app_manager=self.config.app_manager)
        self.config = new
        if self.apps.source is None:
            changes = self.apps.replace(new.apps)
        else:  # the apps live elsewhere: read them again
            changes = AppChanges()
            self.apps.invalidate()
        log.info("reloaded %s: %s", path, changes.summary())
        return changes

    def _apps_changed(self, changes: AppChanges) -> None:
        for app in changes.disabled:
            self.hub.close_app(app.app_id, protocol.APP_DISABLED, "Application disabled")
        for app in changes.removed:
            self.hub.close_app(
                app.app_id, protocol.APP_NOT_FOUND, f"Application does not exist: {app.key}"
            )
        self.webhooks.set_apps(self.apps.all)
        watch = getattr(self.broker, "watch_apps", None)
        if watch is not None:
            watch(tuple(app.app_id for app in self.apps.all))

    def export_metrics(self) -> None:
        """Fold the hub's tallies into the Prometheus metrics."""
        tallies = self.hub.take_tallies()
        self.metrics.add_tallies(tallies)
        self.metrics.add_pubsub(*self.broker.take_tallies())
        self.metrics.http_sessions.set(len(self.http.sessions))
        self.tap.add_tallies(
            sum(t.received for t in tallies.values()), sum(t.delivered for t in tallies.values())
        )

    def _export_forever(self) -> None:
        # Under gunicorn each worker writes its own multiprocess files, so each must export
        # by itself; once a second keeps a scrape at most a second behind.
        while True:
            gevent.sleep(1.0)
            self.export_metrics()


def config_path() -> str:
    """The config file to serve: $IPE_CONFIG, else ./config.yml, else ./config.yml.sample."""
    path = os.environ.get("IPE_CONFIG")
    if path:
        return path
    return "config.yml" if os.path.exists("config.yml") else "config.yml.sample"


def build_state(config: Config) -> State:
    """Wire the per-process objects for `config`."""
    from ipe.http_transport import HttpSessions

    state = _build_state(config)
    state.http = HttpSessions(state)
    state.quotas.tap = state.tap  # refusals show in the console's live log
    if state.redis is not None:
        from ipe.redis.http_routing import HttpRouter

        state.http_router = HttpRouter(state.redis, state.http, state.metrics)
    state.apps.on_change(state._apps_changed)
    return state


def _apps(config: Config, link: Any) -> Apps:
    """The app registry, over the source `app_manager` names."""
    manager = config.app_manager
    if manager.driver == "config":
        return Apps(config.apps)
    source: Any
    if manager.driver == "redis":
        from ipe.redis.apps import RedisApps

        source = RedisApps(link, config.limits)
    elif manager.driver == "sql":
        from ipe.app_managers.sql import SqlApps

        source = SqlApps(manager, config.limits)
    else:
        from ipe.app_managers.http import HttpApps

        source = HttpApps(manager, config.limits)
    return Apps(config.apps, source, manager.cache_ttl, manager.miss_ttl)


def _build_state(config: Config) -> State:
    hub = Hub(config.activity_timeout, config.pong_timeout)
    metrics = Metrics(tuple(app.app_id for app in config.apps))
    if config.redis is None:
        apps = _apps(config, None)
        broker = LocalBroker(hub)
        presence = InMemoryPresence()
        webhooks = Webhooks(config.webhooks, config.apps, metrics)
        return State(
            config=config,
            apps=apps,
            hub=hub,
            broker=broker,
            presence=presence,
            cache=InMemoryCache(),
            webhooks=webhooks,
            metrics=metrics,
            counts=SubscriptionCounts(presence, broker, webhooks),
            quotas=Quotas(metrics),
        )
    # Imported here: a single process never loads the Redis modules.
    from ipe.redis.broker import RedisBroker
    from ipe.redis.cache import RedisCache
    from ipe.redis.janitor import Janitor
    from ipe.redis.link import RedisLink, node_id
    from ipe.redis.presence import RedisPresence
    from ipe.redis.quotas import RedisQuotas
    from ipe.redis.webhook_store import RedisWebhookStore

    link = RedisLink(config.redis, node_id(config.instance_id))
    apps = _apps(config, link)
    webhooks = Webhooks(config.webhooks, config.apps, metrics, RedisWebhookStore(link, config.apps))
    link.on_up(webhooks.wake)  # write what waited in memory as soon as Redis is back
    broker = RedisBroker(hub, link, tuple(app.app_id for app in config.apps), metrics)
    presence = RedisPresence(link)
    quotas = RedisQuotas(link, metrics)
    state = State(
        config=config,
        apps=apps,
        hub=hub,
        broker=broker,
        presence=presence,
        cache=RedisCache(link),
        webhooks=webhooks,
        metrics=metrics,
        counts=SubscriptionCounts(presence, broker, webhooks),
        quotas=quotas,
        redis=link,
    )
    state.janitor = Janitor(
        config, apps, link, presence, broker, webhooks, metrics, state.counts, quotas
    )
    return state


# The last path segment of pusher-js's HTTP fallback requests.
_HTTP_TRANSPORT_ENDINGS = ("/xhr_streaming", "/xhr", "/xhr_send")


class _WebSocketRouter:
    """WSGI middleware: upgraded requests go to `ipe.session`, pusher-js's HTTP fallback to
    `ipe.http_transport`, everything else on (to the lean REST routes, then Flask)."""

    def __init__(self, state: State, wsgi_app: Any, lean: LeanRest) -> None:
        self.state = state
        self.wsgi_app = wsgi_app
        self.lean = lean

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("wsgi.websocket") is not None:
            session.serve(self.state, environ)
            return []
        if environ.get("PATH_INFO", "").endswith(_HTTP_TRANSPORT_ENDINGS):
            return self.state.http.serve(environ, start_response)
        return self.wsgi_app(environ, start_response)

    def answer(self, environ: dict[str, Any]) -> Answer | None:
        """The reply to a plain (not upgraded) request if a lean REST route answers it, else
        None: then the request goes through `__call__` as usual. The handler
        (`ipe.http_handler`) asks this first, skipping Flask's `__call__` and the WSGI layers.
        """
        if environ.get("PATH_INFO", "").endswith(_HTTP_TRANSPORT_ENDINGS):
            return None
        return self.lean.answer(environ)


def create_app(config: Config | None = None) -> Flask:
    """Build the Flask app for `config` (default: load `config_path()`), with its State."""
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        raise RuntimeError(
            "ipe needs gevent's monkey-patching: run it with `ipe`/`python -m ipe`, or under "
            "gunicorn with the GeventWebSocketWorker"
        )
    if config is None:
        config = config_module.load(config_path())
    state = build_state(config)
    app = build_app(state)
    # Started inside the serving process (after any fork), never at import time.
    gevent.spawn(state.start)
    return app


def build_app(state: State) -> Flask:
    """The Flask app around `state`, with nothing started (Flask's test client uses it)."""
    config = state.config
    state.webhooks.tap = state.tap
    # gevent-websocket logs every HTTP request itself, query string (and so auth_signature)
    # included; ipe.rest logs each REST call without it.
    logging.getLogger("geventwebsocket.handler").setLevel(logging.WARNING)
    app = Flask("ipe")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["ipe"] = state
    from ipe import rest
    from ipe.rest_wsgi import LeanRest

    # WebSockets first, then the hot REST routes without Flask, then Flask for the rest.
    lean = LeanRest(state, app.wsgi_app)
    router = _WebSocketRouter(state, lean, lean)
    app.wsgi_app = router  # type: ignore[method-assign]
    # Read by ipe.http_handler: a plain request that a lean route answers skips the WSGI stack.
    app.ipe_answer = router.answer  # type: ignore[attr-defined]
    app.ipe_inline = lambda: state.rest_never_blocks  # type: ignore[attr-defined]

    app.register_blueprint(rest.blueprint)
    if config.console.enabled:
        from ipe import console

        console.install(app, state)

    @app.get("/")
    def index() -> Response:
        return jsonify({"name": "ipe", "apps": len(state.apps.all)})

    @app.get("/health")
    @app.get("/healthz")
    def health() -> tuple[Response, int]:
        return jsonify({"ok": True}), 200

    @app.get("/ready")
    @app.get("/readyz")
    def ready() -> tuple[Response, int]:
        if state.draining:
            return jsonify({"ready": False, "reason": "shutting down"}), 503
        if not state.broker.ready():
            return jsonify({"ready": False, "reason": "broker unavailable"}), 503
        if not state.apps.ready():
            return jsonify({"ready": False, "reason": "apps not loaded yet"}), 503
        # A failing app source leaves the cached apps served: ready, with the reason said.
        return jsonify({"ready": True, "apps": state.apps.status()}), 200

    @app.get("/metrics")
    def metrics() -> Response:
        state.export_metrics()
        return Response(state.metrics.render(), content_type=CONTENT_TYPE)

    return app
