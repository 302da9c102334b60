"""The console's routes (a Flask blueprint under `console.path`): pages, JSON and the stream.

Every route but the login page and the static files needs a session: a page without one
redirects to the login, a data endpoint answers 401. Every POST must carry the session's
CSRF token (form field `csrf` or header `X-CSRF-Token`). No response ever holds an app's
secret: only its last four characters.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import gevent
import gevent.queue
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from ipe import protocol
from ipe.app_documents import secret_hint
from ipe.console import auth
from ipe.console.watchers import END

if TYPE_CHECKING:
    from ipe.app import State
    from ipe.config import AppConfig
    from ipe.console.service import Console
    from ipe.console.watchers import Stream

log = logging.getLogger(__name__)

blueprint = Blueprint(
    "console",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

HEARTBEAT = 15.0  # seconds between SSE comments, so proxies and dead pages are noticed
BATCH = 200  # records written to a stream at once
COALESCE = 0.1  # seconds a stream waits after a record for more to write with it
PUBLIC = {"console.login", "console.login_post", "console.static"}


def _state() -> State:
    return current_app.extensions["ipe"]  # type: ignore[no-any-return]


def _console() -> Console:
    return current_app.extensions["ipe.console"]  # type: ignore[no-any-return]


def _app(app_id: str) -> AppConfig:
    app = _state().apps.by_id(app_id)
    if app is None:
        abort(404)
    return app


def _is_data() -> bool:
    return request.path.startswith(_console().config.path + "/api/")


def _address() -> str:
    return request.remote_addr or "unknown"


@blueprint.before_request
def _guard() -> Response | tuple[Response, int] | None:
    """Session first (redirect or 401), then the CSRF token of every POST."""
    config = _console().config
    public = request.endpoint in PUBLIC
    if not public and auth.current_user(config) is None:
        if _is_data() or request.method != "GET":
            return jsonify({"error": "Not logged in"}), 401
        return redirect(url_for("console.login"))
    if request.method == "POST":
        given = request.headers.get("X-CSRF-Token") or request.form.get("csrf")
        if not auth.csrf_valid(given):
            if _is_data():
                return jsonify({"error": "Missing or wrong CSRF token"}), 403
            return _login_page("Your form expired; please try again.", 403)
    return None


@blueprint.after_request
def _headers(response: Response) -> Response:
    """No framing, no outside resources, nothing cached, no referrer leaking paths."""
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"
    return response


def _apps() -> list[dict[str, Any]]:
    """The apps as the console shows them: never a secret, only its last four characters."""
    return [
        {
            "app_id": app.app_id,
            "name": app.name or app.app_id,
            "key": app.key,
            "secret_hint": secret_hint(app.secret),
            "enabled": app.enabled,
            "webhooks": len(app.webhooks),
        }
        for app in _state().apps.all
    ]


def _page(template: str, **context: Any) -> str:
    return render_template(
        f"console/{template}",
        apps=_apps(),
        user=auth.current_user(_console().config),
        csrf=auth.csrf_token(),
        node=_console().node,
        **context,
    )


# --- login ----------------------------------------------------------------------------------


def _login_page(error: str | None = None, status: int = 200) -> tuple[Response, int]:
    body = render_template("console/login.html", csrf=auth.csrf_token(), error=error)
    return Response(body, mimetype="text/html"), status


@blueprint.get("/login")
def login() -> Any:
    """The login form (also sets the pre-login CSRF token)."""
    if auth.current_user(_console().config) is not None:
        return redirect(url_for("console.overview"))
    return _login_page()


@blueprint.post("/login")
def login_post() -> Any:
    """Check a user name and password; throttled per address."""
    console = _console()
    address = _address()
    wait = console.throttle.retry_after(address)
    if wait:
        response, status = _login_page(f"Too many failed logins; try again in {wait} s.", 429)
        response.headers["Retry-After"] = str(wait)
        return response, status
    username = request.form.get("username", "")[:200]
    password = request.form.get("password", "")[:1000]
    if not auth.check_login(console.config, username, password):
        console.throttle.failed(address)
        log.warning("console: failed login from %s", address)
        return _login_page("Wrong user name or password.", 401)
    console.throttle.succeeded(address)
    auth.log_in(username)
    log.info("console: %s logged in from %s", username, address)
    return redirect(url_for("console.overview"), 303)


@blueprint.post("/logout")
def logout() -> Any:
    """End the session."""
    session.clear()
    return redirect(url_for("console.login"), 303)


# --- pages ----------------------------------------------------------------------------------


@blueprint.get("/")
def overview() -> str:
    """Nodes, connections, message rates, webhooks, Redis."""
    return _page("overview.html", page="overview")


@blueprint.get("/apps/<app_id>")
def app_log(app_id: str) -> str:
    """An app's live event log, with the send-event form."""
    return _page("log.html", page="log", app=_app(app_id))


@blueprint.get("/apps/<app_id>/channels")
def app_channels(app_id: str) -> str:
    """An app's occupied channels, presence members and cache contents."""
    return _page("channels.html", page="channels", app=_app(app_id))


@blueprint.get("/apps/<app_id>/webhooks")
def app_webhooks(app_id: str) -> str:
    """An app's recent webhook deliveries per target."""
    return _page("webhooks.html", page="webhooks", app=_app(app_id))


# --- data -----------------------------------------------------------------------------------


@blueprint.get("/api/overview")
def api_overview() -> Response:
    """The overview's numbers, cluster-wide."""
    return jsonify(_console().overview())


@blueprint.get("/api/apps/<app_id>/channels")
def api_channels(app_id: str) -> Response:
    """Occupied channels with their cluster-wide subscription counts."""
    app = _app(app_id)
    counts = _state().presence.channels(app.app_id)
    channels = [
        {"name": name, "subscriptions": count}
        for name, count in sorted(counts.items())
        if count > 0 and not name.startswith(protocol.SERVER_TO_USER_PREFIX)
    ]
    return jsonify({"channels": channels[:1000], "total": len(channels)})


@blueprint.get("/api/apps/<app_id>/channel")
def api_channel(app_id: str) -> Response:
    """One channel: subscriptions, presence members with user_info, cache contents."""
    app = _app(app_id)
    state = _state()
    name = request.args.get("name", "")
    if not protocol.valid_channel_name(name, app.limits.max_channel_name_length):
        return jsonify({"error": "Invalid channel name"}), 400  # type: ignore[return-value]
    result: dict[str, Any] = {
        "name": name,
        "subscriptions": state.presence.subscription_count(app.app_id, name),
    }
    if protocol.is_presence(name):
        members = state.presence.members(app.app_id, name)
        result["members"] = [{"id": uid, "info": info} for uid, info in members.items()]
    if protocol.is_cache(name):
        cached = state.cache.get(app.app_id, name)
        result["cache"] = (
            None
            if cached is None
            else {"event": cached.event, "data": cached.data, "ttl": cached.ttl}
        )
    return jsonify(result)


@blueprint.get("/api/apps/<app_id>/webhooks")
def api_webhooks(app_id: str) -> Response:
    """The last deliveries per target."""
    app = _app(app_id)
    from ipe.webhook_store import lane_name
    from ipe.webhooks import safe_url

    lanes = [lane_name(app.app_id, index) for index in range(len(app.webhooks))]
    kept = _console().deliveries(app.app_id, lanes)
    targets = [
        {
            "url": safe_url(target.url),
            "event_types": list(target.event_types),
            "deliveries": kept.get(lane_name(app.app_id, index), []),
        }
        for index, target in enumerate(app.webhooks)
    ]
    return jsonify({"targets": targets})


@blueprint.post("/api/apps/<app_id>/events")
def api_send(app_id: str) -> Response:
    """Publish an event exactly as `POST /apps/{id}/events` would (same checks, same path)."""
    from ipe import rest

    app = _app(app_id)
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise rest.ApiError(400, "Expected a JSON object {channel, event, data}")
    data = body.get("data", "")
    if isinstance(data, str) and data.strip():
        try:
            json.loads(data)
        except ValueError:
            raise rest.ApiError(400, "data must be JSON") from None
    if not app.enabled:
        raise rest.ApiError(403, "Application disabled")
    raw = {"name": body.get("event"), "channel": body.get("channel"), "data": data}
    # REST's own validation, rate quota and publish: the app's limits, the cache, the broker.
    rest.publish_one(_state(), app, raw)
    log.info(
        "console: %s sent %r to %r of app %s",
        auth.current_user(_console().config),
        str(body.get("event"))[:64],
        str(body.get("channel"))[:64],
        app.app_id,
    )
    return jsonify({"ok": True})


@blueprint.get("/api/apps/<app_id>/events")
def api_stream(app_id: str) -> Response:
    """The app's live records as Server-Sent Events (recent ones first)."""
    app = _app(app_id)
    watchers = _console().watchers
    stream = watchers.open(app.app_id)
    if stream is None:
        return jsonify({"error": "Too many console streams open"}), 503  # type: ignore[return-value]
    response = Response(_events(stream, watchers), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    # When the stream ends (shutdown), end the connection too: a browser would otherwise
    # hold it open for another request and the server would wait for it.
    response.headers["Connection"] = "close"
    return response


def _events(stream: Stream, watchers: Any) -> Iterator[bytes]:
    """The stream's body: each write goes out at once (gevent's server does not buffer)."""
    try:
        yield b"retry: 2000\n: ipe console\n\n"
        queue = stream.queue
        while True:
            try:
                first = queue.get(timeout=HEARTBEAT)
            except gevent.queue.Empty:
                yield b": keep-alive\n\n"
                continue
            if first == END:
                return
            # Let a burst gather: one write (one syscall, one chunk) for many records.
            gevent.sleep(COALESCE)
            lines = [first]
            while len(lines) < BATCH:
                try:
                    line = queue.get_nowait()
                except gevent.queue.Empty:
                    break
                if line == END:
                    yield b"".join(lines)
                    return
                lines.append(line)
            if stream.dropped:
                note = {"k": "dropped", "count": stream.dropped, "t": round(time.time(), 3)}
                stream.dropped = 0
                lines.append(b"data: " + json.dumps(note).encode() + b"\n\n")
            yield b"".join(lines)
    finally:
        watchers.close(stream)
