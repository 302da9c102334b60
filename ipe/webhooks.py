"""Webhooks: channel and member events POSTed, signed, to each app's receivers.

This first version sends each event on its own, once, from a greenlet, so that the WebSocket
side never waits for a receiver.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from typing import Any

import gevent

from ipe.auth import webhook_signature
from ipe.config import AppConfig

log = logging.getLogger(__name__)


class Webhooks:
    """Queues webhook events per app and delivers them in the background."""

    def emit(self, app: AppConfig, event: dict[str, Any]) -> None:
        """Queue one webhook event (`name`, `channel`, ...) for the app's matching targets."""
        if not app.webhooks:
            return
        gevent.spawn(self._send, app, event)

    def _send(self, app: AppConfig, event: dict[str, Any]) -> None:
        body = json.dumps({"time_ms": int(time.time() * 1000), "events": [event]}).encode()
        for target in app.webhooks:
            if event["name"] not in target.event_types:
                continue
            if not event.get("channel", "").startswith(target.channel_prefix):
                continue
            request = urllib.request.Request(target.url, data=body, method="POST")
            request.add_header("Content-Type", "application/json")
            request.add_header("X-Pusher-Key", app.key)
            request.add_header("X-Pusher-Signature", webhook_signature(app.secret, body))
            for name, value in target.headers:
                request.add_header(name, value)
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    response.read()
            except OSError as exc:
                log.warning("webhook to %s failed: %s", target.url, exc)

    def start(self) -> None:
        """Start background delivery (once per process, after fork)."""

    def stop(self) -> None:
        """Stop background delivery."""
