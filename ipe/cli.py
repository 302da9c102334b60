"""The `ipe` command: serve a config file with gevent's WSGI server."""

from gevent import monkey

monkey.patch_all()  # first: everything imported below must see the patched socket and ssl

import argparse  # noqa: E402
import contextlib  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

from ipe import __version__, logs  # noqa: E402
from ipe import config as config_module  # noqa: E402
from ipe.http_server import Deadlines, Server  # noqa: E402

log = logging.getLogger("ipe")
# gevent listens with a backlog of 128: a burst of reconnecting clients (a deploy, a network
# blip) overflows it and their SYNs are retried a second later. gunicorn's default is 2048.
BACKLOG = 2048


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipe", description="A self-hosted server for the Pusher Channels protocol."
    )
    parser.add_argument(
        "--config",
        "-config",
        default=None,
        help="YAML config file (default: $IPE_CONFIG, else config.yml, else config.yml.sample)",
    )
    parser.add_argument("--host", default=None, help="address to listen on (default: config)")
    parser.add_argument(
        "--port", type=int, default=None, help="port (default: $PORT, else config, else 8080)"
    )
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="log level (default: $IPE_LOG_LEVEL, else config, else info)",
    )
    parser.add_argument(
        "--log-format",
        default=None,
        choices=["text", "json"],
        help="log lines as text or one JSON object each (default: $IPE_LOG_FORMAT, else config)",
    )
    parser.add_argument(
        "--check-config", action="store_true", help="validate the config, print a summary, exit"
    )
    parser.add_argument("--version", action="version", version=f"ipe {__version__}")
    return parser


def _listener(host: str, port: int) -> socket.socket:
    """A listening socket whose connections start with TCP_NODELAY (Linux inherits it).

    pywsgi writes a response's headers and body separately; with Nagle's algorithm the body
    then waits for the client's delayed ACK, about 40 ms on every keep-alive REST request.
    """
    listener = WSGIServer.get_listener(
        (host, port), BACKLOG, socket.AF_INET6 if ":" in host else socket.AF_INET
    )
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return listener


def _summary(cfg: config_module.Config, host: str, port: int) -> str:
    shown = host or "0.0.0.0"
    lines = [f"ipe {__version__} listening on http://{shown}:{port}"]
    if cfg.ssl.enabled:
        lines.append(f"  TLS listener on {cfg.ssl.host} (cert {cfg.ssl.cert_file})")
    engine = "in-process broker (one process)"
    if cfg.redis is not None:
        engine = cfg.redis.describe()
    lines.append(f"  engine: {engine}")
    if cfg.console.enabled:
        users = len(cfg.console.users)
        lines.append(f"  console: http://{shown}:{port}{cfg.console.path}/ ({users} user(s))")
    for app in cfg.apps:
        state = "enabled" if app.enabled else "disabled"
        lines.append(
            f"  app {app.name or app.app_id!r}: app_id={app.app_id} key={app.key} ({state}"
            f"{', TLS only' if app.only_ssl else ''}"
            f"{', client events' if app.user_events else ''}"
            f"{', subscription counts' if app.subscription_count else ''}"
            f"{', webhooks' if app.webhooks else ''})"
        )
        lines.append(
            f"    pusher-js: new Pusher('{app.key}', {{wsHost: '{shown}', wsPort: {port}, "
            f"httpHost: '{shown}', httpPort: {port}, forceTLS: false, cluster: ''}})"
        )
    return "\n".join(lines)


def _reload_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipe reload",
        description="Make a running ipe (or the gunicorn master serving it) re-read its "
        "config file: SIGHUP to the pid in the pid file.",
    )
    parser.add_argument("--config", "-config", default=None, help="config naming pid_file")
    parser.add_argument(
        "--pid-file", default=None, help="pid file (default: $IPE_PID_FILE, else pid_file)"
    )
    return parser


def reload_main(argv: list[str]) -> None:
    """`ipe reload`: signal the process named by the pid file to reload its config."""
    args = _reload_parser().parse_args(argv)
    path = args.pid_file or os.environ.get("IPE_PID_FILE")
    if not path:
        if args.config:
            os.environ["IPE_CONFIG"] = args.config
        from ipe.app import config_path

        try:
            path = config_module.load(config_path()).pid_file
        except config_module.ConfigError as exc:
            print(f"ipe reload: config error: {exc}", file=sys.stderr)
            sys.exit(2)
    if not path:
        print(
            "ipe reload: no pid file: give --pid-file, $IPE_PID_FILE or pid_file",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        with open(path, encoding="ascii") as handle:
            pid = int(handle.read().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        print(f"ipe reload: cannot signal the process in {path}: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"ipe reload: sent SIGHUP to {pid}")


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, load the config and serve until SIGTERM or SIGINT."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["reload"]:
        reload_main(argv[1:])
        return
    if argv[:1] == ["apps"]:
        from ipe.apps_cli import run

        sys.exit(run(argv[1:]))
    args = _parser().parse_args(argv)
    if args.config:
        os.environ["IPE_CONFIG"] = args.config
    from ipe.app import config_path, create_app

    path = config_path()
    try:
        cfg = config_module.load(path)
    except config_module.ConfigError as exc:
        print(f"ipe: config error: {exc}", file=sys.stderr)
        sys.exit(2)

    host = args.host if args.host is not None else cfg.host
    port = args.port or int(os.environ.get("PORT") or 0) or cfg.port
    level = (args.log_level or os.environ.get("IPE_LOG_LEVEL") or cfg.log_level).upper()
    log_format = args.log_format or cfg.log_format
    logs.configure(level, log_format)
    if args.check_config:
        print(f"{path}: OK")
        print(_summary(cfg, host, port))
        return

    app = create_app(cfg)
    state = app.extensions["ipe"]
    # One budget of HTTP-phase connections for both listeners: it is the process's.
    deadlines = Deadlines.from_config(cfg)
    servers = [Server(_listener(host, port), app, deadlines=deadlines, log=None, error_log=log)]
    if cfg.ssl.enabled:
        ssl_host, ssl_port = config_module.parse_listen(cfg.ssl.host, "ssl.host")
        servers.append(
            Server(
                _listener(ssl_host, ssl_port),
                app,
                deadlines=deadlines,
                log=None,
                error_log=log,
                keyfile=cfg.ssl.key_file,
                certfile=cfg.ssl.cert_file,
            )
        )
    for server in servers:
        server.start()
    if log_format == "json":  # every line of output a JSON object
        log.info("serving %s\n%s", path, _summary(cfg, host, port))
    else:
        print(f"serving {path}\n{_summary(cfg, host, port)}", flush=True)

    stopping = gevent.event.Event()

    def stop(signum: int) -> None:
        log.info("received signal %d, closing connections", signum)
        stopping.set()

    gevent.signal_handler(signal.SIGTERM, stop, signal.SIGTERM)
    gevent.signal_handler(signal.SIGINT, stop, signal.SIGINT)
    # In a greenlet of its own: the handler runs in the hub, where nothing may block.
    gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(state.reload, path))
    pid_file = cfg.pid_file
    if pid_file:
        with open(pid_file, "w", encoding="ascii") as handle:
            handle.write(f"{os.getpid()}\n")
    try:
        stopping.wait()
        state.shutdown()
        for server in servers:
            server.stop(timeout=5)
    finally:
        if pid_file:
            with contextlib.suppress(OSError):
                os.unlink(pid_file)
    log.info("stopped")
