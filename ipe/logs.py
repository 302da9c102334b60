"""How ipe's log lines look: text (the default) or one JSON object per line (`log_format`).

Pure: imports only the standard library, so gunicorn's master may load it for its
`logconfig_dict` before any worker monkey-patches.

Code that logs passes the fields an operator filters on as `extra={...}` (names in FIELDS);
the JSON formatter writes them as keys of their own, the text format leaves them out. No
field ever holds a secret, a signature or a query string: log a path, never a URL with its
query (`auth_signature` travels there).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The structured fields, in the order they appear in a JSON line.
FIELDS = (
    "app_id",
    "socket_id",
    "channel",
    "method",
    "path",
    "status",
    "duration_ms",
    "remote_addr",
    "url",
    "events",
    "attempts",
)


def remote_address(environ: dict[str, Any]) -> str:
    """The client's address for logs: the peer of the TCP connection.

    The one place that decides it, so that resolving X-Forwarded-For through trusted
    proxies (`trusted_proxies`) needs a change here only.
    """
    return str(environ.get("REMOTE_ADDR") or "")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, pid, then the FIELDS set."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON (newlines inside values are escaped)."""
        line: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        fields = record.__dict__
        for name in FIELDS:
            value = fields.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


def _iso_time(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def configure(level: str, fmt: str) -> None:
    """Send every logger's records to stderr, as text or JSON lines, from `level` up."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def gunicorn_logconfig(level: str, fmt: str) -> dict[str, Any]:
    """gunicorn's `logconfig_dict`: ipe's records and gunicorn's own through one handler
    (gunicorn's `generic` format, which shows each worker's pid, or JSON)."""
    handler = "ipe_json" if fmt == "json" else "error_console"
    config: dict[str, Any] = {
        "root": {"level": level.upper(), "handlers": [handler]},
        "loggers": {
            name: {"level": "INFO", "handlers": [handler], "propagate": False}
            for name in ("gunicorn.error", "gunicorn.access")
        },
    }
    if fmt == "json":
        config["formatters"] = {"ipe_json": {"()": "ipe.logs.JsonFormatter"}}
        config["handlers"] = {
            "ipe_json": {
                "class": "logging.StreamHandler",
                "formatter": "ipe_json",
                "stream": "ext://sys.stderr",
            }
        }
    return config
