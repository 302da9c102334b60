"""The Pusher HTTP API: signed requests in, events to the broker, channel state out.

The rules live here once, as plain functions of a `Call` (one request, read from its WSGI
environ). Two front ends serve them: `ipe.rest_wsgi` answers the hot routes (publishing and the
channel reads) without Flask's per-request machinery, and the Flask blueprint below serves
every route (whatever the lean router passes on: other methods, odd paths, the rest of the API).

Every rejection is the status Pusher gives with a JSON body `{"error": "..."}`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.wsgi import get_input_stream

from ipe import auth, forwarded, protocol, quotas
from ipe.hub import EVENT, TERMINATE

if TYPE_CHECKING:
    from ipe.app import State
    from ipe.config import AppConfig, Limits

log = logging.getLogger(__name__)

blueprint = Blueprint("rest", __name__)

CHANNEL_INFO = frozenset({"user_count", "subscription_count", "cache"})
CHANNELS_INFO = frozenset({"user_count", "subscription_count"})
EVENT_INFO = frozenset({"user_count", "subscription_count"})


class ApiError(Exception):
    """A request rejected with an HTTP status and a message."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


class Call:
    """One REST request as the checks see it: method, path, query and (unread) body.

    Read from the WSGI environ the way werkzeug reads it, so that both front ends see the same
    request: the path decoded as UTF-8, the query's first value of each key.
    """

    __slots__ = ("environ", "method", "path", "app_id", "_args")

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ
        self.method: str = environ.get("REQUEST_METHOD", "GET").upper()
        path = environ.get("PATH_INFO") or ""
        if not path.isascii():
            path = path.encode("latin1").decode(errors="replace")
        self.path = "/" + path.lstrip("/")
        self.app_id = ""  # the served app's id once found: a bounded metrics label
        self._args: dict[str, str] | None = None

    @property
    def args(self) -> dict[str, str]:
        """The percent-decoded query parameters; the first value of a repeated key."""
        if self._args is None:
            query = self.environ.get("QUERY_STRING", "")
            args: dict[str, str] = {}
            if query.isascii() and "%" not in query and "+" not in query:
                # What parse_qsl does when there is nothing to decode (an SDK's usual query).
                for pair in query.split("&"):
                    if pair:
                        name, _, value = pair.partition("=")
                        args.setdefault(name, value)
            else:
                query = query.encode("latin1").decode()
                for name, value in parse_qsl(
                    query, keep_blank_values=True, errors="werkzeug.url_quote"
                ):
                    args.setdefault(name, value)
            self._args = args
        return self._args

    def signed_paths(self) -> tuple[str, ...]:
        """The paths the client may have signed: as routed, and as sent (a proxy's prefix)."""
        raw = self.environ.get("RAW_URI") or self.environ.get("REQUEST_URI")
        if raw:
            raw_path = raw.split("?", 1)[0]
            if raw_path != self.path:
                return (self.path, raw_path)
        return (self.path,)


# --- the checks, in the order every request meets them ------------------------------------------


def find_app(state: State, app_id: str) -> AppConfig:
    """The app of the path (404 if none)."""
    app = state.apps.by_id(app_id)
    if app is None:
        raise ApiError(404, f"Unknown app: {app_id[:64]}")
    return app


# id(limits) -> (limits, its body_cap): looked up by identity, since hashing the frozen
# dataclass (every field) cost more than the arithmetic. The entry holds the object, so
# its id cannot be reused while the entry exists.
_CAPS: dict[int, tuple[Limits, int]] = {}


def body_cap(limits: Limits) -> int:
    """The largest body a valid request can have under `limits`; larger ones get 413 unread.

    Bounds the worst legitimate JSON: a full batch (or one event to every allowed channel)
    whose data is at the size limit and escaped at worst 6 bytes per byte (`\\u001f`), whose
    names are escaped at worst 12 bytes per character (an astral character as two `\\uXXXX`).
    """
    found = _CAPS.get(id(limits))
    if found is not None and found[0] is limits:
        return found[1]
    cap = _body_cap(limits)
    if len(_CAPS) >= 64:
        _CAPS.clear()
    _CAPS[id(limits)] = (limits, cap)
    return cap


def _body_cap(limits: Limits) -> int:
    event = 6 * limits.max_message_size + 12 * limits.max_event_name_length + 256
    one = event + limits.max_channels_per_event * (limits.max_channel_name_length + 3)
    batch = limits.max_batch_size * (event + limits.max_channel_name_length + 16)
    return max(one, batch) + 4096


def read_body(call: Call, limits: Limits) -> bytes:
    """The request body, refused with 413 before reading if it is declared too large.

    A chunked body has no declared length: werkzeug stops reading at the limit and returns
    what it read, so one byte more is allowed through to tell "too large" from "exactly full".
    """
    cap = body_cap(limits)
    environ = call.environ
    length = environ.get("CONTENT_LENGTH", "")
    try:
        if (
            environ.get("wsgi.input_terminated")
            and "HTTP_TRANSFER_ENCODING" not in environ
            and (not length or (length.isascii() and length.isdigit() and int(length) <= cap))
        ):
            # The server ends the stream at the declared length (at once without one):
            # werkzeug's wrapper would add nothing but its own read loop.
            return environ["wsgi.input"].read()  # type: ignore[no-any-return]
        body = get_input_stream(environ, max_content_length=cap + 1).read()
    except RequestEntityTooLarge:
        body = None
    except OSError:
        # The client stopped sending within http_timeout (ipe.http_server shut the socket):
        # nobody is left to read an answer.
        raise ApiError(408, "Request body not received in time") from None
    if body is None or len(body) > cap:
        raise ApiError(413, f"Request body larger than {cap} bytes")
    return body


def authenticate(app: AppConfig, call: Call) -> bytes:
    """Check the request signature (401) and that the app is enabled (403); then read the
    body and check it against the signed body_md5 (401).

    The body is read only once the query's signature holds, so that nobody without the
    secret can make ipe read (or wait for) a body; reading it is bounded by http_timeout.
    """
    try:
        auth.verify_rest(
            app.key, app.secrets, call.method, call.signed_paths(), call.args, None, time.time()
        )
    except auth.RestAuthError as exc:
        raise ApiError(401, str(exc)) from None
    if not app.enabled:
        raise ApiError(403, "Application disabled")
    body = read_body(call, app.limits)
    try:
        auth.verify_body_md5(call.args, body)
    except auth.RestAuthError as exc:
        raise ApiError(401, str(exc)) from None
    return body


def authorize(state: State, call: Call, app_id: str) -> tuple[AppConfig, bytes]:
    """The app of the path, after authenticating the request; and the request body."""
    app = find_app(state, app_id)
    call.app_id = app.app_id
    body = authenticate(app, call)
    if call.method == "GET" and app.limits.max_read_requests_per_second:
        _take(state, app, quotas.READ_REQUESTS, 1, app.limits.max_read_requests_per_second)
    return app, body


def _take(state: State, app: AppConfig, limit: str, amount: int, maximum: int) -> None:
    """Use `amount` of the app's per-second `limit`, or refuse the request with 429.

    Called once per request (never per channel or subscriber), and only for a limit that is
    set: a limit of 0 costs nothing, not even a Redis round trip.
    """
    if not state.quotas.take(app.app_id, limit, amount, maximum):
        state.quotas.refused(app.app_id, limit)
        raise ApiError(
            429, f"Rate limit exceeded: {limit} is {maximum}", retry_after=quotas.RETRY_AFTER
        )


def _take_events(state: State, app: AppConfig, events: list[_Event]) -> None:
    """Count a request's events (one per event and channel) against the app's rate."""
    maximum = app.limits.max_backend_events_per_second
    if maximum:
        _take(state, app, quotas.BACKEND_EVENTS, sum(len(e.channels) for e in events), maximum)


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object (400 if it is not one)."""
    try:
        # Strict UTF-8: json.loads(bytes) would also take UTF-16/32 and decode UTF-8-encoded
        # surrogates ("surrogatepass").
        # protocol.loads: no NaN, Infinity or 1e999 (re-sent as Infinity), no nesting past
        # the recursion limit (100 000 brackets are within the size cap). Lone surrogates are
        # refused by _Event, which names the field that holds one.
        parsed = protocol.loads(body.decode(), surrogates=True)
    except ValueError:
        raise ApiError(400, "Request body is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise ApiError(400, "Request body must be a JSON object")
    return parsed


def _info(value: Any, allowed: frozenset[str]) -> set[str]:
    if value in (None, ""):
        return set()
    if not isinstance(value, str):
        raise ApiError(400, "info must be a comma-separated string")
    attrs = {a.strip() for a in value.split(",") if a.strip()}
    unknown = attrs - allowed
    if unknown:
        raise ApiError(400, f"Unsupported info attribute: {sorted(unknown)[0]}")
    return attrs


def _channel(name: Any, limits: Limits) -> str:
    if not protocol.valid_channel_name(name, limits.max_channel_name_length):
        shown = name[:64] if isinstance(name, str) else name
        raise ApiError(400, f"Invalid channel name: {shown!r}")
    return name  # type: ignore[no-any-return]


# --- events -------------------------------------------------------------------------------------


class _Event:
    """One validated event of a trigger or batch request."""

    __slots__ = ("name", "data", "channels", "socket_id", "info")

    def __init__(self, raw: Any, limits: Limits, batch: bool) -> None:
        """Validate `raw`; a batch item names one `channel`, a trigger `channels` or `channel`."""
        if not isinstance(raw, dict):
            raise ApiError(400, "Each event must be a JSON object")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "Missing event name")
        if len(name) > limits.max_event_name_length:
            raise ApiError(400, f"Event name longer than {limits.max_event_name_length} characters")
        if not name.isascii() and not _encodable(name):
            raise ApiError(400, "Event name is not valid Unicode")
        if "data" not in raw:
            raise ApiError(400, "Missing event data")
        data = raw["data"]
        if not isinstance(data, str):
            data = protocol.dumps(data)
        # Measured in UTF-8 bytes, as Pusher does; ASCII data (the usual case) needs no copy.
        if data.isascii():
            size = len(data)
        else:
            try:
                size = len(data.encode())
            except UnicodeEncodeError:
                raise ApiError(400, "Event data is not valid Unicode") from None
        if size > limits.max_message_size:
            raise ApiError(413, f"Event data larger than {limits.max_message_size} bytes")
        if batch:
            channel = raw.get("channel")
            if channel is None:
                raise ApiError(400, "Missing channel")
            channels = [channel]
        else:
            channels = raw.get("channels")
            if channels is None:
                channel = raw.get("channel")
                if channel is None:
                    raise ApiError(400, "Missing channel or channels")
                channels = [channel]
            if not isinstance(channels, list) or not channels:
                raise ApiError(400, "channels must be a non-empty list")
            if len(channels) > limits.max_channels_per_event:
                raise ApiError(400, f"More than {limits.max_channels_per_event} channels")
        socket_id = raw.get("socket_id")
        if socket_id == "":
            socket_id = None  # pusher-http-go before 5.0 always sends "socket_id": ""
        if socket_id is not None and not protocol.valid_socket_id(socket_id):
            raise ApiError(400, f"Invalid socket_id: {str(socket_id)[:64]!r}")
        self.name = name
        self.data = data
        self.channels = list(dict.fromkeys(_channel(c, limits) for c in channels))
        self.socket_id = socket_id
        self.info = _info(raw.get("info"), EVENT_INFO)

    def publish(self, state: State, app: AppConfig) -> None:
        """Encode once per channel and hand each to the broker (and the cache)."""
        app_id = app.app_id
        payloads = protocol.encode_events(self.name, self.channels, self.data)
        for channel, payload in zip(self.channels, payloads, strict=True):
            if protocol.is_cache(channel):
                state.cache.put(app_id, channel, self.name, self.data, app.limits.cache_ttl)
            state.broker.publish(app_id, EVENT, channel, payload, self.socket_id)
            if app_id in state.tap.apps:
                state.tap.api_message(app_id, channel, self.name, self.data)


def _encodable(text: str) -> bool:
    """False for strings with lone surrogates (JSON "\\ud800"), which UTF-8 cannot carry."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _counts(state: State, app: AppConfig, channel: str, attrs: set[str]) -> dict[str, int]:
    """The `info` attributes of one published-to channel (user_count only for presence)."""
    counts = {}
    if "user_count" in attrs and protocol.is_presence(channel):
        counts["user_count"] = len(state.presence.members(app.app_id, channel))
    if "subscription_count" in attrs:
        counts["subscription_count"] = state.presence.subscription_count(app.app_id, channel)
    return counts


# --- the routes: each takes the State, the Call and the path's parts, and returns the reply ------


def publish_one(state: State, app: AppConfig, raw: dict[str, Any]) -> _Event:
    """Validate one event, count it against the app's rate and publish it: what a trigger
    does once authorized (the console's send form too)."""
    event = _Event(raw, app.limits, batch=False)
    _take_events(state, app, [event])
    event.publish(state, app)
    return event


def trigger(state: State, call: Call, app_id: str) -> dict[str, Any]:
    """Publish one event to up to 100 channels."""
    app, body = authorize(state, call, app_id)
    event = publish_one(state, app, json_object(body))
    if event.info:
        return {"channels": {ch: _counts(state, app, ch, event.info) for ch in event.channels}}
    return {}


def trigger_batch(state: State, call: Call, app_id: str) -> dict[str, Any]:
    """Publish up to 10 events; one invalid event rejects the whole batch."""
    app, body = authorize(state, call, app_id)
    batch = json_object(body).get("batch")
    if not isinstance(batch, list):
        raise ApiError(400, "Missing batch")
    if len(batch) > app.limits.max_batch_size:
        raise ApiError(400, f"Cannot batch-send more than {app.limits.max_batch_size} events")
    events = [_Event(raw, app.limits, batch=True) for raw in batch]
    _take_events(state, app, events)
    for event in events:
        event.publish(state, app)
    if any(e.info for e in events):
        return {"batch": [_counts(state, app, e.channels[0], e.info) for e in events]}
    return {}


def channels(state: State, call: Call, app_id: str) -> dict[str, Any]:
    """Occupied channels, optionally filtered by prefix, with optional user counts."""
    app, _ = authorize(state, call, app_id)
    prefix = call.args.get("filter_by_prefix", "")
    attrs = _info(call.args.get("info"), CHANNELS_INFO)
    if "user_count" in attrs and not prefix.startswith("presence-"):
        raise ApiError(400, "info=user_count requires filter_by_prefix=presence-")
    result = {}
    for channel, count in state.presence.channels(app.app_id).items():
        if count <= 0 or not channel.startswith(prefix):
            continue
        if channel.startswith(protocol.SERVER_TO_USER_PREFIX):
            continue
        info: dict[str, int] = {}
        if "user_count" in attrs:
            info["user_count"] = len(state.presence.members(app.app_id, channel))
        if "subscription_count" in attrs:
            info["subscription_count"] = count
        result[channel] = info
    return {"channels": result}


def channel(state: State, call: Call, app_id: str, channel: str) -> dict[str, Any]:
    """One channel's state: occupied, and the requested counts and cache."""
    app, _ = authorize(state, call, app_id)
    channel = _channel(channel, app.limits)
    attrs = _info(call.args.get("info"), CHANNEL_INFO)
    if "user_count" in attrs and not protocol.is_presence(channel):
        raise ApiError(400, "info=user_count is only available for presence channels")
    if "cache" in attrs and not protocol.is_cache(channel):
        raise ApiError(400, "info=cache is only available for cache channels")
    count = state.presence.subscription_count(app.app_id, channel)
    result: dict[str, Any] = {"occupied": count > 0}
    if "user_count" in attrs:
        result["user_count"] = len(state.presence.members(app.app_id, channel))
    if "subscription_count" in attrs:
        result["subscription_count"] = count
    if "cache" in attrs:
        cached = state.cache.get(app.app_id, channel)
        result["cache"] = None if cached is None else {"data": cached.data, "ttl": cached.ttl}
    return result


def users(state: State, call: Call, app_id: str, channel: str) -> dict[str, Any]:
    """The distinct user ids of a presence channel."""
    app, _ = authorize(state, call, app_id)
    channel = _channel(channel, app.limits)
    if not protocol.is_presence(channel):
        raise ApiError(400, "Users are only available for presence channels")
    members = state.presence.members(app.app_id, channel)
    return {"users": [{"id": user_id} for user_id in members]}


def _terminate(state: State, app: AppConfig, user_id: str) -> dict[str, Any]:
    if not protocol.CHANNEL_NAME_RE.fullmatch(user_id):
        raise ApiError(400, "Invalid user id")
    state.broker.publish(app.app_id, TERMINATE, user_id)
    return {}


def terminate(state: State, call: Call, app_id: str, user_id: str) -> dict[str, Any]:
    """Close every connection signed in as `user_id`."""
    app, _ = authorize(state, call, app_id)
    return _terminate(state, app, user_id)


def terminate_without_app(state: State, call: Call, user_id: str) -> dict[str, Any]:
    """The path pusher-http-python 3.3.x signs: the app is found by its auth_key."""
    app = state.apps.by_key(call.args.get("auth_key", ""))
    if app is not None:
        call.app_id = app.app_id
    if app is None:
        # No app id in the path: an unknown key is a credentials problem (401), not a 404.
        raise ApiError(401, "Unknown or missing auth_key")
    authenticate(app, call)
    return _terminate(state, app, user_id)


Route = Callable[..., dict[str, Any]]

# (method, Flask rule, route); the Flask endpoint is "rest." + the route's name.
ROUTES: tuple[tuple[str, str, Route], ...] = (
    ("POST", "/apps/<app_id>/events", trigger),
    ("POST", "/apps/<app_id>/batch_events", trigger_batch),
    ("GET", "/apps/<app_id>/channels", channels),
    ("GET", "/apps/<app_id>/channels/<channel>", channel),
    ("GET", "/apps/<app_id>/channels/<channel>/users", users),
    ("POST", "/apps/<app_id>/users/<user_id>/terminate_connections", terminate),
    ("POST", "/users/<user_id>/terminate_connections", terminate_without_app),
)


# --- replies and bookkeeping, shared by both front ends -----------------------------------------

# What Flask's jsonify writes (compact, ASCII, keys in order, a newline), without a Response.
_encode_json = json.JSONEncoder(separators=(",", ":")).encode


_EMPTY_REPLY = b"{}\n"  # a publish's usual reply


def encode_reply(value: Any) -> bytes:
    """A reply body exactly as `flask.jsonify` writes it."""
    if not value and type(value) is dict:
        return _EMPTY_REPLY
    return (_encode_json(value) + "\n").encode()


def error_reply(exc: ApiError) -> dict[str, str]:
    """The body of a rejection."""
    return {"error": exc.message}


def error_headers(exc: ApiError) -> list[tuple[str, str]]:
    """The extra headers of a rejection: `Retry-After` on a 429."""
    return [] if exc.retry_after is None else [("Retry-After", str(exc.retry_after))]


HTTP_ERRORS = {404: "Not found", 405: "Method not allowed", 413: "Request body too large"}


def http_error_reply(exc: HTTPException) -> tuple[int, dict[str, str], list[tuple[str, str]]]:
    """Status, body and extra headers (`Allow` on 405) for one of werkzeug's HTTP errors."""
    status = exc.code or 500
    extra = [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"]
    return status, {"error": HTTP_ERRORS.get(status, exc.name)}, extra


INTERNAL_ERROR = {"error": "Internal server error"}


def unexpected(call_method: str, path: str) -> dict[str, str]:
    """Log the exception being handled; the body of the 500 that answers it."""
    log.exception("error serving %s %s", call_method, path)
    return INTERNAL_ERROR


def finished(
    state: State,
    environ: dict[str, Any],
    endpoint: str,
    status: int,
    started: float | None,
    app_id: str = "",
    path_app_id: str | None = None,
) -> None:
    """Count and log one answered HTTP request (any route, either front end).

    `app_id` is the served app the request was for ("" if none was found): the metrics
    label. `path_app_id` is the app id as the path gave it, for the log line.
    """
    state.metrics.count_request(app_id, endpoint, status)
    if not log.isEnabledFor(logging.INFO):
        return
    elapsed = (time.monotonic() - started) * 1000 if started else 0.0
    call = Call(environ)
    log.info(
        "%s %s %d %.1fms",
        call.method,
        call.path,
        status,
        elapsed,
        extra={
            "app_id": str(path_app_id)[:64] if path_app_id is not None else None,
            "method": call.method,
            "path": call.path,
            "status": status,
            "duration_ms": round(elapsed, 1),
            "remote_addr": forwarded.client_address(environ, state.config.trusted_proxies),
        },
    )


# --- the Flask front end ------------------------------------------------------------------------


def _state() -> State:
    return current_app.extensions["ipe"]  # type: ignore[no-any-return]


def _flask_view(route: Route) -> Callable[..., Response]:
    def view(**parts: str) -> Response:
        call = g.ipe_call = Call(request.environ)  # the after-request hook reads its app_id
        return jsonify(route(_state(), call, **parts))

    view.__name__ = route.__name__
    view.__doc__ = route.__doc__
    return view


for _method, _rule, _route in ROUTES:
    blueprint.add_url_rule(
        _rule,
        _route.__name__,
        _flask_view(_route),
        methods=[_method],
        provide_automatic_options=False,
    )


@blueprint.app_errorhandler(ApiError)
def _api_error(exc: ApiError) -> tuple[Response, int]:
    response = jsonify(error_reply(exc))
    response.headers.extend(error_headers(exc))
    return response, exc.status


@blueprint.app_errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    """Routing and body-size errors of werkzeug, with ipe's JSON body (and `Allow` on 405)."""
    status, body, extra = http_error_reply(exc)
    response = jsonify(body)
    response.status_code = status
    for name, value in extra:
        response.headers[name] = value
    return response


@blueprint.app_errorhandler(Exception)
def _unexpected(exc: Exception) -> tuple[Response, int]:
    return jsonify(unexpected(request.method, request.path)), 500


@blueprint.before_app_request
def _start_timer() -> None:
    g.ipe_started = time.monotonic()


@blueprint.after_app_request
def _log_request(response: Response) -> Response:
    call = g.get("ipe_call")
    finished(
        _state(),
        request.environ,
        request.endpoint or "unknown",
        response.status_code,
        g.get("ipe_started"),
        call.app_id if call is not None else "",
        (request.view_args or {}).get("app_id"),
    )
    return response
