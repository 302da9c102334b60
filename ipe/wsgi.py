"""gunicorn's entry point: `gunicorn -c gunicorn.conf.py ipe.wsgi:app`.

The GeventWebSocketWorker monkey-patches before it imports this module; `create_app` checks.
"""

from __future__ import annotations

from ipe.app import create_app

app = create_app()
