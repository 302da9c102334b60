"""ipe: a self-hosted server for the Pusher Channels protocol."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def create_app(*args: Any, **kwargs: Any) -> Any:
    """Build the WSGI app (imported lazily: importing `ipe` must not import gevent)."""
    from ipe.app import create_app as _create_app

    return _create_app(*args, **kwargs)
