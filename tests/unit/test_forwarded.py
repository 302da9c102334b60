"""ipe.forwarded: X-Forwarded-For / -Proto believed only from trusted_proxies."""

from __future__ import annotations

import pytest

from ipe.forwarded import client_address, is_secure

LOOPBACK = ("127.0.0.1", "::1")


def environ(peer: str, xff: str | None = None, proto: str | None = None) -> dict[str, str]:
    env = {"REMOTE_ADDR": peer, "wsgi.url_scheme": "http"}
    if xff is not None:
        env["HTTP_X_FORWARDED_FOR"] = xff
    if proto is not None:
        env["HTTP_X_FORWARDED_PROTO"] = proto
    return env


def test_untrusted_peer_is_the_client_whatever_it_claims():
    assert client_address(environ("203.0.113.9", "198.51.100.1"), LOOPBACK) == "203.0.113.9"


def test_trusted_proxy_names_the_client():
    assert client_address(environ("127.0.0.1", "198.51.100.1"), LOOPBACK) == "198.51.100.1"


def test_the_nearest_untrusted_hop_is_the_client():
    """A client may put anything first in X-Forwarded-For: the proxies append to the right."""
    env = environ("127.0.0.1", "6.6.6.6, 198.51.100.1, 10.0.0.2")
    assert client_address(env, ("127.0.0.1", "10.0.0.0/8")) == "198.51.100.1"


def test_only_trusted_hops_give_the_leftmost():
    assert (
        client_address(environ("127.0.0.1", "10.0.0.3, 10.0.0.2"), ("127.0.0.0/8", "10.0.0.0/8"))
        == "10.0.0.3"
    )


def test_trusted_proxy_without_header_is_the_client():
    assert client_address(environ("::1"), LOOPBACK) == "::1"


def test_ipv4_mapped_peer_matches_an_ipv4_entry():
    assert client_address(environ("::ffff:127.0.0.1", "198.51.100.1"), LOOPBACK) == "198.51.100.1"


def test_star_trusts_every_peer():
    assert client_address(environ("203.0.113.9", "198.51.100.1"), ("*",)) == "198.51.100.1"


def test_garbage_in_the_header_is_bounded():
    assert len(client_address(environ("127.0.0.1", "x" * 10000), LOOPBACK)) <= 64


@pytest.mark.parametrize(
    ("peer", "proto", "secure"),
    [
        ("127.0.0.1", "https", True),
        ("127.0.0.1", "wss", True),
        ("127.0.0.1", "http", False),
        ("203.0.113.9", "https", False),
        ("203.0.113.9", None, False),
    ],
)
def test_forwarded_proto_counts_only_from_trusted_peers(peer, proto, secure):
    assert is_secure(environ(peer, proto=proto), LOOPBACK) is secure


def test_real_tls_is_secure_from_anyone():
    env = environ("203.0.113.9")
    env["wsgi.url_scheme"] = "https"
    assert is_secure(env, LOOPBACK)
