"""The console's app management pages: list, add, edit, disable/enable, remove, rotate secrets.

Only `app_manager: driver: redis` can be changed from here, through the same `RedisApps`
edits as `ipe apps` (validated by `ipe.config.parse_app`, announced on Pub/Sub, so every node
serves a change within a second and closes a disabled app's sockets with 4003, a removed
app's with 4001). With the other drivers the pages show the apps read-only and say where
they are managed; a POST gets 409.

Pages never hold a secret, only its last four characters; a secret made here is shown once,
in the answer to the POST that made it (never in a cookie, never in a URL).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import yaml
from flask import Response, abort, redirect, request, url_for
from werkzeug.datastructures import MultiDict

from ipe import app_documents
from ipe.apps import AppSourceError
from ipe.config import AppConfig, ConfigError, Limits
from ipe.console import auth, views
from ipe.console.views import blueprint

if TYPE_CHECKING:
    from ipe.redis.apps import RedisApps

log = logging.getLogger(__name__)

FLAGS = ("user_events", "only_ssl", "subscription_count", "authorized_connections")
FLAG_DEFAULTS = {flag: getattr(AppConfig, flag) for flag in FLAGS}
LIMITS = tuple(f.name for f in fields(Limits))
MAX_FIELD = 10000  # characters kept of a form field; more is surely not a setting
DONE = {  # ?done=... after a redirect: what the page says happened
    "added": "App added.",
    "saved": "Settings saved.",
    "rotated": "New secret first; the old ones stay valid until you drop them.",
    "enabled": "App enabled.",
    "disabled": "App disabled: its sockets were closed (4003).",
    "dropped": "Old secrets dropped: only the current secret is valid now.",
    "removed": "App removed: its sockets were closed (4001).",
}


def _store() -> RedisApps | None:
    """The Redis app store when apps are managed here; None for the read-only drivers."""
    state = views._state()
    if state.config.app_manager.driver != "redis":
        return None
    return state.apps.source  # type: ignore[no-any-return]


def _managed_elsewhere() -> str:
    """Where the apps of this deployment are changed, for a read-only page."""
    state = views._state()
    manager = state.config.app_manager
    if manager.driver == "sql":
        return (
            f"Apps come from the SQL table {manager.table!r} (app_manager driver sql): "
            f"change them there; every node reads the table again within {manager.cache_ttl:g} s."
        )
    if manager.driver == "http":
        return (
            "Apps come from an HTTP endpoint (app_manager driver http): change them in the "
            "system behind it. Listed here: the apps this node has looked up so far."
        )
    from ipe.app import config_path

    return (
        f"Apps come from the apps: list of the config file {config_path()}: edit it, then "
        "reload (SIGHUP or `ipe reload`). To manage apps here, use app_manager driver redis."
    )


def _field(form: MultiDict[str, str], name: str) -> str:
    return form.get(name, "")[:MAX_FIELD].strip()


def _number(text: str) -> int | float | str:
    """A form's number as a number; anything else as given, for parse_app to name the key."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# --- what the pages show ----------------------------------------------------------------------


def _row(document: dict[str, Any]) -> dict[str, Any]:
    return {
        "app_id": str(document.get("app_id", "")),
        "name": document.get("name") or "",
        "key": document.get("key", ""),
        "secrets": [app_documents.secret_hint(str(s)) for s in app_documents.secrets_of(document)],
        "enabled": _enabled(document.get("enabled", True)),
    }


def _enabled(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "no", "off", "0")
    return value is not False


def _rows_of(apps: tuple[AppConfig, ...]) -> list[dict[str, Any]]:
    return [
        {
            "app_id": app.app_id,
            "name": app.name,
            "key": app.key,
            "secrets": [app_documents.secret_hint(s) for s in app.secrets],
            "enabled": app.enabled,
        }
        for app in apps
    ]


def _values_of_document(document: dict[str, Any]) -> dict[str, Any]:
    """The settings form's fields, filled from a stored mapping."""
    origins = document.get("allowed_origins") or []
    limits = document.get("limits") if isinstance(document.get("limits"), dict) else {}
    return {
        "name": document.get("name") or "",
        "key": document.get("key", ""),
        **{flag: bool(document.get(flag, FLAG_DEFAULTS[flag])) for flag in FLAGS},
        "signin_timeout": document.get("signin_timeout", ""),
        "allowed_origins": "\n".join(
            str(o) for o in (origins if isinstance(origins, list) else [origins])
        ),
        "limits": {name: limits.get(name, "") for name in LIMITS},  # type: ignore[union-attr]
        "webhooks": "",
        "webhooks_clear": False,
    }


def _values_of_app(app: AppConfig) -> dict[str, Any]:
    """The settings form's fields, filled from a served app (read-only drivers)."""
    return {
        "name": app.name,
        "key": app.key,
        **{flag: getattr(app, flag) for flag in FLAGS},
        "signin_timeout": app.signin_timeout,
        "allowed_origins": "\n".join(app.allowed_origins),
        "limits": {name: getattr(app.limits, name) for name in LIMITS},
        "webhooks": "",
        "webhooks_clear": False,
    }


def _values_of_form(form: MultiDict[str, str]) -> dict[str, Any]:
    """The settings form's fields as the user sent them (shown again with an error)."""
    return {
        "name": _field(form, "name"),
        "key": _field(form, "key"),
        **{flag: flag in form for flag in FLAGS},
        "signin_timeout": _field(form, "signin_timeout"),
        "allowed_origins": _field(form, "allowed_origins"),
        "limits": {name: _field(form, f"limits.{name}") for name in LIMITS},
        "webhooks": _field(form, "webhooks"),
        "webhooks_clear": "webhooks_clear" in form,
    }


def _webhook_rows(app: AppConfig | None) -> list[dict[str, Any]]:
    from ipe.webhooks import safe_url

    if app is None:
        return []
    return [{"url": safe_url(t.url), "event_types": ", ".join(t.event_types)} for t in app.webhooks]


# --- the edits a form asks for ----------------------------------------------------------------


def _settings_edit(form: MultiDict[str, str]) -> Callable[[dict[str, Any]], None]:
    """The settings form as an edit of the stored mapping (keys the form lacks stay)."""
    values = _values_of_form(form)
    webhooks: Any = None
    if values["webhooks"] and not values["webhooks_clear"]:
        try:
            webhooks = yaml.safe_load(values["webhooks"])
        except yaml.YAMLError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
            raise ConfigError(f"app.webhooks: not valid YAML ({first})") from None
        if webhooks is None:
            raise ConfigError("app.webhooks: expected a list of targets, e.g. - url: https://...")

    def edit(document: dict[str, Any]) -> None:
        document["name"] = values["name"]
        document["key"] = values["key"]
        for flag in FLAGS:
            document[flag] = values[flag]
        _set_or_drop(document, "signin_timeout", _number(values["signin_timeout"]))
        origins = [line.strip() for line in values["allowed_origins"].splitlines()]
        _set_or_drop(document, "allowed_origins", [o for o in origins if o])
        limits = {name: _number(text) for name, text in values["limits"].items() if text}
        _set_or_drop(document, "limits", limits)
        if values["webhooks_clear"]:
            document.pop("webhooks", None)
        elif webhooks is not None:
            document["webhooks"] = webhooks

    return edit


def _set_or_drop(document: dict[str, Any], key: str, value: Any) -> None:
    if value in ("", [], {}):
        document.pop(key, None)  # the default (the top-level limits, any origin...)
    else:
        document[key] = value


# --- pages ------------------------------------------------------------------------------------


def _apps_page(
    error: str | None = None, status: int = 200, form: MultiDict[str, str] | None = None
) -> tuple[Response, int]:
    store = _store()
    rows: list[dict[str, Any]] = []
    if store is None:
        rows = _rows_of(views._state().apps.all)
    else:
        try:
            rows = [_row(d) for _, d in sorted(store.documents().items())]
        except AppSourceError as exc:
            error, status = error or str(exc), max(status, 503)
    body = views._page(
        "apps.html",
        page="apps",
        rows=rows,
        managed=store is not None,
        elsewhere=None if store is not None else _managed_elsewhere(),
        error=error,
        done=DONE.get(request.args.get("done", "")),
        form=form or {},
    )
    return Response(body, mimetype="text/html"), status


def _settings_page(
    app_id: str,
    error: str | None = None,
    status: int = 200,
    values: dict[str, Any] | None = None,
) -> tuple[Response, int]:
    store = _store()
    served = views._state().apps.by_id(app_id)
    if store is None:
        if served is None:
            abort(404)
        row = _rows_of((served,))[0]
        values = values or _values_of_app(served)
    else:
        try:
            document = store.document(app_id)
        except app_documents.NoSuchApp:
            abort(404)
        except AppSourceError as exc:
            return _apps_page(str(exc), 503)
        row = _row(document)
        values = values or _values_of_document(document)
        if row["key"] != getattr(served, "key", None):
            served = None  # not served (yet) as stored: its webhooks are not known parsed
    body = views._page(
        "app_settings.html",
        page="settings",
        app=row,
        values=values,
        base_limits=views._state().config.limits,
        limit_names=LIMITS,
        webhooks=_webhook_rows(served),
        managed=store is not None,
        elsewhere=None if store is not None else _managed_elsewhere(),
        error=error,
        done=DONE.get(request.args.get("done", "")),
    )
    return Response(body, mimetype="text/html"), status


def _secret_page(row: dict[str, Any], secret: str, what: str) -> tuple[Response, int]:
    body = views._page("app_secret.html", page="settings", app=row, secret=secret, what=what)
    return Response(body, mimetype="text/html"), 200


def _read_only() -> tuple[Response, int]:
    return _apps_page(
        f"Apps cannot be changed from the console with app_manager driver "
        f"{views._state().config.app_manager.driver}. {_managed_elsewhere()}",
        409,
    )


def _changed(action: str, app_id: str) -> None:
    """After a write: log it, and serve it on this node before the page that follows (the
    other nodes, and this one too, also re-read on the Pub/Sub announcement)."""
    views._state().apps.reread()
    log.info(
        "console: %s %s app %s", auth.current_user(views._console().config), action, app_id[:64]
    )


@blueprint.get("/apps")
def apps() -> Any:
    """Every app, with the add form when they are managed here."""
    return _apps_page()


@blueprint.post("/apps")
def apps_add() -> Any:
    """Add an app (a random secret unless one is given; a random key unless one is given)."""
    store = _store()
    if store is None:
        return _read_only()
    form = request.form
    app_id = _field(form, "app_id")
    given = _field(form, "secret")
    secret = given or app_documents.new_secret()
    key = _field(form, "key") or app_documents.new_secret()[:20]
    document = app_documents.new_app(
        app_id, key, secret, _field(form, "name"), enabled="disabled" not in form
    )
    try:
        app = store.add(document)
    except ConfigError as exc:
        return _apps_page(str(exc), 400, form)
    except AppSourceError as exc:
        return _apps_page(str(exc), 503, form)
    _changed("added", app.app_id)
    if given:
        return _done(app.app_id, "added")
    return _secret_page(_rows_of((app,))[0], secret, "added")


@blueprint.get("/apps/<app_id>/settings")
def app_settings(app_id: str) -> Any:
    """An app's settings and limits, its secrets (last four characters), its state."""
    return _settings_page(app_id)


def _attempt(
    app_id: str, action: str, change: Callable[[RedisApps], Any]
) -> tuple[Any, tuple[Response, int] | None]:
    """Run one change of a stored app: (its result, None), or (None, the page that says why
    not: 409 read-only, 400 invalid, 503 Redis) - never a traceback."""
    store = _store()
    if store is None:
        return None, _read_only()
    try:
        result = change(store)
    except app_documents.NoSuchApp:
        abort(404)
    except ConfigError as exc:
        values = _values_of_form(request.form) if action == "updated" else None
        return None, _settings_page(app_id, str(exc), 400, values)
    except AppSourceError as exc:
        return None, _settings_page(app_id, str(exc), 503)
    _changed(action, app_id)
    return result, None


def _done(app_id: str, done: str) -> Response:
    return redirect(url_for("console.app_settings", app_id=app_id, done=done), 303)


@blueprint.post("/apps/<app_id>/settings")
def app_settings_post(app_id: str) -> Any:
    """Save the settings form."""
    if _store() is None:
        return _read_only()
    try:
        edit = _settings_edit(request.form)
    except ConfigError as exc:
        return _settings_page(app_id, str(exc), 400, _values_of_form(request.form))
    _, failed = _attempt(app_id, "updated", lambda store: store.update(app_id, edit))
    return failed or _done(app_id, "saved")


@blueprint.post("/apps/<app_id>/disable")
def app_disable(app_id: str) -> Any:
    """Disable an app: its sockets are closed with 4003 on every node."""
    _, failed = _attempt(app_id, "disabled", lambda store: store.set_enabled(app_id, False))
    return failed or _done(app_id, "disabled")


@blueprint.post("/apps/<app_id>/enable")
def app_enable(app_id: str) -> Any:
    """Enable an app again."""
    _, failed = _attempt(app_id, "enabled", lambda store: store.set_enabled(app_id, True))
    return failed or _done(app_id, "enabled")


@blueprint.post("/apps/<app_id>/rotate-secret")
def app_rotate(app_id: str) -> Any:
    """Add a new first secret (random unless given); the old ones stay valid until dropped."""
    given = _field(request.form, "secret")
    rotated, failed = _attempt(
        app_id, "rotated the secret of", lambda store: store.rotate_secret(app_id, given or None)
    )
    if failed:
        return failed
    app, secret = rotated
    if given:
        return _done(app_id, "rotated")
    return _secret_page(_rows_of((app,))[0], secret, "rotated")


@blueprint.post("/apps/<app_id>/drop-old-secrets")
def app_drop_old(app_id: str) -> Any:
    """Keep only the current secret: signatures made with an old one get 401 from now on."""
    _, failed = _attempt(
        app_id, "dropped the old secrets of", lambda store: store.drop_old_secrets(app_id)
    )
    return failed or _done(app_id, "dropped")


@blueprint.get("/apps/<app_id>/remove")
def app_remove_confirm(app_id: str) -> Any:
    """The confirmation step before removing an app."""
    store = _store()
    if store is None:
        return _settings_page(app_id)  # nothing to confirm: the page says where apps live
    return _remove_page(store, app_id)


def _remove_page(store: RedisApps, app_id: str, error: str | None = None, status: int = 200) -> Any:
    """The confirmation page of removing `app_id` (with `error`, if the confirmation failed)."""
    try:
        row = _row(store.document(app_id))
    except app_documents.NoSuchApp:
        abort(404)
    except AppSourceError as exc:
        return _apps_page(str(exc), 503)
    body = views._page("app_remove.html", page="settings", app=row, error=error)
    return Response(body, mimetype="text/html"), status


@blueprint.post("/apps/<app_id>/remove")
def app_remove(app_id: str) -> Any:
    """Remove an app once its id was typed in to confirm: its sockets are closed with 4001."""
    store = _store()
    if store is None:
        return _read_only()
    if _field(request.form, "confirm") != app_id:
        return _remove_page(store, app_id, "Type the app's id to confirm.", 400)
    try:
        if not store.remove(app_id):
            abort(404)
    except AppSourceError as exc:
        return _apps_page(str(exc), 503)
    _changed("removed", app_id)
    return redirect(url_for("console.apps", done="removed"), 303)
