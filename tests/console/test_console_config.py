"""The `console:` section: defaults, required keys and errors naming them."""

from __future__ import annotations

import pytest

from ipe import config
from ipe.config import ConfigError

APPS = [{"app_id": "1", "key": "k", "secret": "s"}]
USERS = [{"username": "admin", "password": "${IPE_CONSOLE_PASSWORD}"}]


def parse(console: dict | None, env: dict | None = None) -> config.Config:
    raw = {"apps": APPS}
    if console is not None:
        raw["console"] = console
    return config.parse(raw, env or {})


def test_off_by_default():
    console = parse(None).console
    assert console.enabled is False and console.path == "/console"
    assert console.session_hours == 12


def test_enabled_with_the_secret_key_from_the_environment():
    env = {"IPE_SECRET_KEY": "k" * 32, "IPE_CONSOLE_PASSWORD": "pw"}
    console = parse({"enabled": True, "users": USERS}, env).console
    assert console.enabled and console.secret_key == "k" * 32
    assert console.users[0].username == "admin" and console.users[0].password == "pw"
    assert "pw" not in repr(console) and "k" * 32 not in repr(console)


def test_enabled_without_a_secret_key_names_it():
    with pytest.raises(ConfigError, match=r"^console\.secret_key: required"):
        parse({"enabled": True, "users": USERS}, {"IPE_CONSOLE_PASSWORD": "pw"})


@pytest.mark.parametrize(
    ("console", "message"),
    [
        ({"users": []}, r"console\.users: at least one"),
        ({"path": "/"}, r"console\.path"),
        ({"path": "/apps"}, r"console\.path"),
        ({"secret_key": "short"}, r"console\.secret_key: must be at least 16"),
        ({"users": [{"username": "a"}]}, r"console\.users\[0\]\.password: missing"),
        ({"users": [{"username": "a", "password": ""}]}, r"console\.users\[0\]\.password"),
        ({"session_hours": 0}, r"console\.session_hours"),
        ({"colour": "red"}, r"console\.colour: unknown key"),
    ],
)
def test_invalid_console_sections(console: dict, message: str):
    base = {"enabled": True, "secret_key": "x" * 20, "users": [{"username": "a", "password": "b"}]}
    with pytest.raises(ConfigError, match=message):
        parse({**base, **console})


def test_path_is_normalised():
    console = parse(
        {"enabled": True, "secret_key": "x" * 20, "users": USERS, "path": "debug/"},
        {"IPE_CONSOLE_PASSWORD": "pw"},
    ).console
    assert console.path == "/debug"
