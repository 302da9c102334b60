"""Who may use the console: password checks, the login throttle, CSRF tokens, the session.

The session is Flask's signed cookie (itsdangerous) under a key derived from
`console.secret_key`, so a cookie of one deployment means nothing to another. It holds the
user name, the login time (sessions end `session_hours` after login, whatever the activity)
and the CSRF token that every POST must echo.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict

import gevent
from flask import Flask, Request, session
from flask.sessions import SecureCookieSessionInterface
from werkzeug.security import check_password_hash

from ipe.config import ConsoleConfig

THROTTLE_FAILURES = 5  # failed logins per address...
THROTTLE_WINDOW = 300.0  # ...within this many seconds, then refused until the window ends
THROTTLE_ADDRESSES = 10000  # addresses remembered; the oldest are forgotten first


def session_key(secret_key: str) -> bytes:
    """The Flask session key: derived, so that the configured secret itself signs nothing."""
    return hmac.new(secret_key.encode(), b"ipe console session v1", hashlib.sha256).digest()


def password_matches(stored: str, given: str) -> bool:
    """Check `given` against a plain or Werkzeug-hashed (`pbkdf2:`, `scrypt:`) password."""
    if stored.startswith(("pbkdf2:", "scrypt:")):
        try:
            # Hashing takes a CPU for a long while (pbkdf2: 600 000 rounds); hashlib lets go
            # of the GIL, so in a thread it does not stall every socket of this process.
            return bool(gevent.get_hub().threadpool.apply(check_password_hash, (stored, given)))
        except ValueError:  # a malformed hash in the config matches nothing
            return False
    return hmac.compare_digest(stored.encode(), given.encode())


def check_login(config: ConsoleConfig, username: str, password: str) -> bool:
    """True if one configured user has this name and password (time does not tell which)."""
    found = None
    for user in config.users:
        if hmac.compare_digest(user.username.encode(), username.encode()):
            found = user
    if found is None:
        if config.users:  # the same work as for a real user: time does not tell names
            password_matches(config.users[0].password, password)
        return False
    return password_matches(found.password, password)


class Throttle:
    """Failed logins per address in a sliding window; a bounded table, oldest dropped first."""

    def __init__(
        self,
        failures: int = THROTTLE_FAILURES,
        window: float = THROTTLE_WINDOW,
        size: int = THROTTLE_ADDRESSES,
    ) -> None:
        self.failures = failures
        self.window = window
        self.size = size
        self._seen: OrderedDict[str, list[float]] = OrderedDict()

    def retry_after(self, address: str, now: float | None = None) -> int:
        """Seconds until `address` may try again; 0 if it may now."""
        now = time.monotonic() if now is None else now
        times = self._recent(address, now)
        if len(times) < self.failures:
            return 0
        return max(1, int(times[0] + self.window - now + 1))

    def failed(self, address: str, now: float | None = None) -> None:
        """Count one failed login of `address`."""
        now = time.monotonic() if now is None else now
        times = self._recent(address, now)
        times.append(now)
        self._seen[address] = times[-self.failures :]
        self._seen.move_to_end(address)
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)

    def succeeded(self, address: str) -> None:
        """Forget the failures of an address that logged in."""
        self._seen.pop(address, None)

    def _recent(self, address: str, now: float) -> list[float]:
        return [t for t in self._seen.get(address, ()) if now - t < self.window]


class ConsoleSessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie, with `Secure` whenever the request came over HTTPS."""

    salt = "ipe-console"

    def get_cookie_secure(self, app: Flask) -> bool:
        from flask import request

        return is_https(request)


def is_https(request: Request) -> bool:
    """True for HTTPS, directly or behind a proxy that says so (X-Forwarded-Proto)."""
    if request.scheme == "https":
        return True
    forwarded = request.headers.get("X-Forwarded-Proto", "")
    return forwarded.split(",")[0].strip().lower() == "https"


def configure(app: Flask, config: ConsoleConfig) -> None:
    """Set the app's session cookie up for the console."""
    app.secret_key = session_key(config.secret_key)
    app.session_interface = ConsoleSessionInterface()
    app.config.update(
        SESSION_COOKIE_NAME="ipe_console",
        SESSION_COOKIE_PATH=config.path,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=int(config.session_hours * 3600),
        SESSION_REFRESH_EACH_REQUEST=False,
    )


def csrf_token() -> str:
    """This session's CSRF token (made on first use, kept for the session's life)."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def csrf_valid(given: str | None) -> bool:
    """True if `given` is this session's CSRF token."""
    token = session.get("csrf")
    return isinstance(token, str) and isinstance(given, str) and hmac.compare_digest(token, given)


def current_user(config: ConsoleConfig) -> str | None:
    """The logged-in user, if the session is valid and younger than `session_hours`."""
    user = session.get("user")
    started = session.get("t")
    if not isinstance(user, str) or not isinstance(started, int | float):
        return None
    if time.time() - started > config.session_hours * 3600 or started > time.time() + 60:
        return None
    if not any(hmac.compare_digest(u.username.encode(), user.encode()) for u in config.users):
        return None  # the user was removed from the config
    return user


def log_in(username: str) -> None:
    """Start a fresh session for `username` (a new CSRF token: no fixation)."""
    session.clear()
    session.permanent = True
    session["user"] = username
    session["t"] = int(time.time())
    session["csrf"] = secrets.token_urlsafe(32)
