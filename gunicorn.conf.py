"""gunicorn settings for ipe: `gunicorn -c gunicorn.conf.py ipe.wsgi:app` (see the Procfile).

Never add --preload, and never import ipe.app here: the gevent worker must monkey-patch
before the app (and redis, ssl) is imported, which happens in each worker after fork.
"""

import functools
import math
import os
import signal

# gunicorn binds 0.0.0.0:$PORT by itself when PORT is set (Heroku); this is the default else.
bind = os.environ.get("GUNICORN_BIND") or f"0.0.0.0:{os.environ.get('PORT', '8080')}"
worker_class = "geventwebsocket.gunicorn.workers.GeventWebSocketWorker"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
# The gevent pool size caps concurrent WebSockets per worker (gunicorn's default is 1000).
worker_connections = int(os.environ.get("IPE_WORKER_CONNECTIONS", "10000"))


def _config_path() -> str:
    return os.environ.get("IPE_CONFIG") or (
        "config.yml" if os.path.exists("config.yml") else "config.yml.sample"
    )


@functools.cache
def _ipe_config():
    """The ipe config the workers will serve, or None when it does not load (the worker then
    reports the error itself)."""
    from ipe import config as ipe_config  # pure: imports no gevent, socket users or redis

    try:
        return ipe_config.load(_config_path())
    except ipe_config.ConfigError:
        return None


def _stop_seconds() -> float:
    """How long a worker may take after SIGTERM: its drain (`drain_seconds`), the last closing
    handshakes and the webhook flush (see ipe.config.Config.stop_seconds)."""
    config = _ipe_config()
    return config.stop_seconds if config is not None else 20.0


def _ipe_logconfig():
    from ipe import logs  # pure, like ipe.config

    config = _ipe_config()
    level = os.environ.get("IPE_LOG_LEVEL") or (config.log_level if config else "info")
    fmt = os.environ.get("IPE_LOG_FORMAT", "").lower() or (config.log_format if config else "")
    return logs.gunicorn_logconfig(level, fmt or "text")


# On SIGTERM a worker keeps listening (so /ready answers 503) while it closes its WebSockets
# with 4200 in batches over `drain_seconds`; gunicorn must not kill it before it is done.
graceful_timeout = math.ceil(_stop_seconds())  # gunicorn wants an int
timeout = 30
max_requests = 0  # recycling a worker would drop every socket it holds
# TLS ends at the proxy (Heroku's router, nginx): trust its X-Forwarded-Proto for only_ssl.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
# Two gunicorns on one host would otherwise fight over one control socket path.
control_socket_disable = True
# ipe logs through `logging` (one line per connection, REST call and Redis state change):
# the root logger gets gunicorn's handler and format (which shows each worker's pid), or JSON
# lines with `log_format: json` / IPE_LOG_FORMAT=json, and gunicorn's own lines do not reach
# it twice.
logconfig_dict = _ipe_logconfig()


def on_starting(server):
    """Refuse several workers without Redis: each would only reach its own sockets."""
    from ipe import config as ipe_config  # pure: imports no gevent, socket users or redis

    if server.cfg.workers > 1:
        if ipe_config.load(_config_path()).redis is None:
            raise SystemExit(
                f"ipe: {server.cfg.workers} workers need Redis (set REDIS_URL or the redis: "
                "section); without it each worker reaches only its own clients. "
                "Use WEB_CONCURRENCY=1 or configure Redis."
            )


# `ipe reload` signals the pid in this file (the master), like `ipe`'s own pid_file.
pidfile = os.environ.get("IPE_PID_FILE") or None


def when_ready(server):
    """TCP_NODELAY on the listeners, which accepted sockets inherit: pywsgi writes headers and
    body separately, and Nagle would hold the body ~40 ms for the client's delayed ACK.

    And SIGHUP to the master reloads ipe's config in every worker, in place: gunicorn's own
    HUP would replace the workers, closing every socket they hold.
    """
    import socket

    for listener in server.LISTENERS:
        sock = getattr(listener, "sock", None)
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def forward_hup():
        server.log.info("SIGHUP: reloading ipe's config in %d worker(s)", len(server.WORKERS))
        for pid in list(server.WORKERS):
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass

    server.handle_hup = forward_hup  # the arbiter looks its handlers up by name


def post_worker_init(worker):
    """On SIGTERM, drain (/ready 503, WebSockets closed with 4200 over `drain_seconds`) while
    still listening, and only then let gunicorn stop accepting and wait for handlers."""
    import gevent

    state = worker.wsgi.extensions["ipe"]
    stop_serving = worker.handle_exit

    def handle_exit(sig, frame):
        if getattr(worker, "ipe_shutdown", None) is None:
            worker.ipe_shutdown = gevent.spawn(state.shutdown, lambda: stop_serving(sig, frame))

    signal.signal(signal.SIGTERM, handle_exit)
    # The reload runs in a greenlet: a signal handler must not block the worker's loop.
    signal.signal(signal.SIGHUP, lambda sig, frame: gevent.spawn(state.reload))


def worker_exit(server, worker):
    """Let shutdown finish (webhooks still being flushed) after the last socket has gone."""
    shutdown = getattr(worker, "ipe_shutdown", None)
    if shutdown is not None:
        shutdown.join(timeout=graceful_timeout)


def child_exit(server, worker):
    """Drop a dead worker's live gauges from the Prometheus multiprocess directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
