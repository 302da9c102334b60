"""Who a request is from, and whether it came over TLS, believing proxies only if trusted. Pure.

`X-Forwarded-For` and `X-Forwarded-Proto` are headers anyone can send: on a public address
they would let a client claim any address (in logs) or claim TLS (past `only_ssl`). They are
read only when the TCP peer is one of `trusted_proxies` (the config key; default loopback).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from typing import Any

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=16)
def _networks(trusted: tuple[str, ...]) -> tuple[_Network, ...] | None:
    """The parsed `trusted_proxies`; None when "*" trusts every peer."""
    if "*" in trusted:
        return None
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in trusted)


def _trusted(address: str, trusted: tuple[str, ...]) -> bool:
    networks = _networks(trusted)
    if networks is None:
        return True
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def client_address(environ: Mapping[str, Any], trusted: tuple[str, ...]) -> str:
    """The client's address: the TCP peer, or, behind trusted proxies, the address the
    nearest untrusted hop was seen from in `X-Forwarded-For` (read right to left)."""
    peer = str(environ.get("REMOTE_ADDR") or "")
    if not peer or not _trusted(peer, trusted):
        return peer
    hops = [h.strip() for h in str(environ.get("HTTP_X_FORWARDED_FOR", "")).split(",")]
    hops = [h for h in hops if h]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop[:64]  # the header is the client's text: bound what reaches a log line
    return hops[0][:64] if hops else peer


def is_secure(environ: Mapping[str, Any], trusted: tuple[str, ...]) -> bool:
    """True if the request came over TLS: to ipe itself, or to a trusted proxy that says so."""
    if environ.get("wsgi.url_scheme") == "https":
        return True
    peer = str(environ.get("REMOTE_ADDR") or "")
    if not peer or not _trusted(peer, trusted):
        return False
    forwarded = str(environ.get("HTTP_X_FORWARDED_PROTO", ""))
    return forwarded.split(",")[0].strip().lower() in ("https", "wss")
