"""gunicorn's worker class for ipe: gevent-websocket's, with `ipe.http_handler.Handler`.

Named by gunicorn.conf.py. Imported by gunicorn's master before any worker monkey-patches, so it
imports nothing of ipe but the handler (which touches no socket at import).
"""

from __future__ import annotations

from geventwebsocket.gunicorn.workers import GeventWebSocketWorker

from ipe.http_handler import Handler


class Worker(GeventWebSocketWorker):  # type: ignore[misc]
    """GeventWebSocketWorker serving each connection with ipe's cheaper keep-alive handler."""

    wsgi_handler = Handler
