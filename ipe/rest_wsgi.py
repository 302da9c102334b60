"""The lean front end of the REST API: the hot routes as plain WSGI, without Flask.

A backend publishes with one signed request per change, so `POST /events`, `POST
/batch_events` and the channel reads are answered here: the path is matched by splitting it,
the route of `ipe.rest` runs on a `Call` read straight from the environ, and the reply is
written as the bytes `flask.jsonify` would produce, with the same status line and headers.
Flask's request context, routing, hooks and Response object cost more than the route itself.

Anything that is not exactly one of these routes with its method (HEAD, OPTIONS, a trailing
slash, a non-ASCII path, the rest of the API) goes on to Flask, which serves the same routes of
`ipe.rest` and every error page. The rules are written once, in `ipe.rest`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

from ipe import rest

if TYPE_CHECKING:
    from ipe.app import State

WsgiApp = Callable[[dict[str, Any], Any], Iterable[bytes]]
# A reply: WSGI status line, headers and the whole body.
Answer = tuple[str, list[tuple[str, str]], bytes]

# Status lines as werkzeug writes them ("404 NOT FOUND").
_STATUS = {code: f"{code} {reason.upper()}" for code, reason in HTTP_STATUS_CODES.items()}

# (method, number of path segments, last segment) -> route of ipe.rest.
# Segments of "/apps/{id}/events" are ["", "apps", id, "events"].
_ROUTES: dict[tuple[str, int, str | None], rest.Route] = {
    ("POST", 4, "events"): rest.trigger,
    ("POST", 4, "batch_events"): rest.trigger_batch,
    ("GET", 4, "channels"): rest.channels,
    ("GET", 5, None): rest.channel,
    ("GET", 6, "users"): rest.users,
}
# The endpoint names Flask gives the same routes (for metrics): "rest.trigger", ...
_ENDPOINTS = {route: f"{rest.blueprint.name}.{route.__name__}" for route in _ROUTES.values()}


def match(method: str, path: str) -> tuple[str, rest.Route, list[str]] | None:
    """(endpoint, route, path arguments) of a lean route, or None to leave it to Flask."""
    if not path.startswith("/apps/") or not path.isascii():
        return None
    parts = path.split("/")
    n = len(parts)
    if n == 5:
        if parts[3] != "channels":
            return None
        found = _ROUTES.get((method, 5, None))
        args = [parts[2], parts[4]]
    elif n == 6:
        if parts[3] != "channels":
            return None
        found = _ROUTES.get((method, 6, parts[5]))
        args = [parts[2], parts[4]]
    else:
        found = _ROUTES.get((method, n, parts[-1]))
        args = [parts[2]]
    if found is None or not all(args):
        return None
    return _ENDPOINTS[found], found, args


class LeanRest:
    """WSGI app: the hot REST routes answered here, every other request passed to `fallback`."""

    def __init__(self, state: State, fallback: WsgiApp) -> None:
        self.state = state
        self.fallback = fallback

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        answer = self.answer(environ)
        if answer is None:
            return self.fallback(environ, start_response)
        status, headers, body = answer
        start_response(status, headers)
        return [body]

    def answer(self, environ: dict[str, Any]) -> Answer | None:
        """(status line, headers, body) of a lean route's reply, or None if not one of them.

        The WSGI server's handler (`ipe.http_handler`) calls this directly for a plain
        request, without the WSGI layers above it; `__call__` is the same answer as WSGI.
        """
        found = match(environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""))
        if found is None:
            return None
        endpoint, route, args = found
        started = time.monotonic()
        call = rest.Call(environ)
        extra: list[tuple[str, str]] = []
        try:
            status, reply = 200, route(self.state, call, *args)
        except rest.ApiError as exc:
            status, reply, extra = exc.status, rest.error_reply(exc), rest.error_headers(exc)
        except HTTPException as exc:
            status, reply, extra = rest.http_error_reply(exc)
        except Exception:
            status, reply = 500, rest.unexpected(call.method, call.path)
        body = rest.encode_reply(reply)
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        rest.finished(self.state, environ, endpoint, status, started, call.app_id, args[0])
        return _STATUS[status], headers + extra if extra else headers, body
