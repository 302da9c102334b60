"""Apps from an HTTP endpoint (`app_manager: driver: http`): ipe asks for one app at a time.

`GET {url}?key=KEY` (or `?app_id=ID`) with `auth_key=ipe`, `auth_timestamp` and
`auth_version=1.0`, signed like a Pusher REST call: `auth_signature` is the HMAC-SHA256, keyed
with `app_manager.secret`, of `GET\\n{path}\\n{sorted query}`. The endpoint answers 200 with the
app as JSON, in the config file's shape (`app_id`, `key`, `secret` or `secrets`, `limits`, ...),
or 404 when there is no such app; anything else counts as the endpoint failing.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ipe import auth
from ipe.apps import AppSourceError
from ipe.config import AppConfig, AppManagerConfig, ConfigError, Limits, parse_app

MAX_ANSWER = 1 << 20  # bytes of one app's JSON


def signed_query(secret: str, path: str, params: dict[str, str], now: float) -> str:
    """The query string of a signed request to the app endpoint."""
    query = {**params, "auth_key": "ipe", "auth_timestamp": str(int(now)), "auth_version": "1.0"}
    query["auth_signature"] = auth.sign(secret, auth.rest_string_to_sign("GET", path, query))
    return urllib.parse.urlencode(query)


class HttpApps:
    """An `AppSource` that asks an HTTP endpoint for each app by key or id."""

    name = "http"
    enumerable = False

    def __init__(self, manager: AppManagerConfig, limits: Limits) -> None:
        self.url = manager.url
        self.secret = manager.secret
        self.timeout = manager.timeout
        self.limits = limits
        self.path = urllib.parse.urlsplit(self.url).path or "/"
        self._opener = urllib.request.build_opener()

    def fetch_all(self) -> tuple[AppConfig, ...]:
        """Not possible: the endpoint answers for one app at a time."""
        raise AppSourceError("an HTTP app endpoint cannot list its apps")

    def fetch(self, key: str | None = None, app_id: str | None = None) -> AppConfig | None:
        """Ask the endpoint for the app with this key or id."""
        params = {"key": key} if key is not None else {"app_id": app_id or ""}
        query = signed_query(self.secret, self.path, params, time.time())
        separator = "&" if "?" in self.url else "?"
        request = urllib.request.Request(
            f"{self.url}{separator}{query}", headers={"Accept": "application/json"}
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as answer:
                body = answer.read(MAX_ANSWER + 1)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise AppSourceError(f"app endpoint answered {exc.code}") from None
        except (OSError, ValueError) as exc:
            raise AppSourceError(f"app endpoint unreachable: {exc}") from None
        if len(body) > MAX_ANSWER:
            raise AppSourceError("app endpoint answered more than 1 MiB")
        try:
            document: Any = json.loads(body)
            app = parse_app(document, self.limits, "app endpoint's answer")
        except (ValueError, ConfigError) as exc:
            raise AppSourceError(f"app endpoint answered an invalid app: {exc}") from None
        if (key is not None and app.key != key) or (app_id is not None and app.app_id != app_id):
            raise AppSourceError("app endpoint answered another app than the one asked for")
        return app

    def watch(self, changed: Any) -> None:
        """Nothing to watch: known apps are asked for again every cache_ttl."""
