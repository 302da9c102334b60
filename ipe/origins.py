"""Which web pages may open an app's WebSockets: `allowed_origins` patterns and the matching of
an `Origin` header against them. Pure.

A pattern is `scheme://host[:port]`; a host starting with `*.` matches one or more labels in
front of the rest (`https://*.example.com` matches `https://a.b.example.com`, not
`https://example.com`). Scheme, host and port must match exactly, a missing port being the
scheme's default; hosts are compared case-insensitively.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

# scheme "://" host [":" port], with an optional trailing slash (as pasted from a browser).
# A host is a name, an IPv4 address or a bracketed IPv6 address.
_ORIGIN_RE = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s/:?#@\[\]]+)"
    r"(?::(?P<port>[0-9]{1,5}))?/?"
)


class Origin(NamedTuple):
    """A parsed origin: lower-case scheme and host, and the port (the default when absent)."""

    scheme: str
    host: str
    port: int | None


def parse(text: str) -> Origin | None:
    """An `Origin` header's value, parsed; None when it is not a `scheme://host[:port]`."""
    match = _ORIGIN_RE.fullmatch(text.strip())
    if match is None:
        return None
    scheme = match["scheme"].lower()
    port = int(match["port"]) if match["port"] else DEFAULT_PORTS.get(scheme)
    if port is not None and not 0 < port < 65536:
        return None
    host = match["host"].lower().rstrip(".")
    if not host:
        return None
    return Origin(scheme, host, port)


def parse_pattern(text: str) -> Origin:
    """An `allowed_origins` entry, parsed; ValueError saying what is wrong with it."""
    origin = parse(text)
    if origin is None:
        raise ValueError(f"expected scheme://host[:port], got {text!r}")
    host = origin.host
    wildcard = host.startswith("*.")
    if "*" in (host[2:] if wildcard else host) or (wildcard and len(host) < 3):
        raise ValueError(f"'*' is allowed only as the first label ('*.example.com'): {text!r}")
    return origin


def matches(origin: Origin, pattern: Origin) -> bool:
    """True if `origin` is allowed by `pattern`."""
    if origin.scheme != pattern.scheme or origin.port != pattern.port:
        return False
    if pattern.host.startswith("*."):
        suffix = pattern.host[1:]  # ".example.com"
        return len(origin.host) > len(suffix) and origin.host.endswith(suffix)
    return origin.host == pattern.host


class Allowlist:
    """An app's compiled `allowed_origins`; empty allows every origin (and none at all)."""

    __slots__ = ("patterns",)

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(parse_pattern(p) for p in patterns)

    def allows(self, header: str | None) -> bool:
        """Whether a WebSocket with this `Origin` header (None: without one) may connect."""
        if not self.patterns:
            return True
        if not header:
            return False
        origin = parse(header)
        return origin is not None and any(matches(origin, p) for p in self.patterns)
