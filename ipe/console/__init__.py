"""The debug console in the browser: live events of every app, cluster-wide, behind a login.

`install` adds it to the Flask app when `console.enabled` is true; otherwise nothing of it
runs and the hot paths' tap (`ipe.console.tap`) watches no app. Templates, JavaScript and
CSS ship in this package: the console loads nothing from elsewhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from ipe.app import State


def install(app: Flask, state: State) -> None:
    """Mount the console at `console.path` and start its per-process work with the state."""
    from ipe.console import auth, manage  # noqa: F401 (manage adds its routes to the blueprint)
    from ipe.console.service import Console
    from ipe.console.views import blueprint

    config = state.config.console
    console = Console(state)
    app.extensions["ipe.console"] = console
    auth.configure(app, config)
    app.register_blueprint(blueprint, url_prefix=config.path)
    state.console = console
