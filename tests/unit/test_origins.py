"""allowed_origins matching: exact scheme, host and port; `*.` for one or more labels."""

from __future__ import annotations

import pytest

from ipe import origins
from ipe.origins import Allowlist


def allows(patterns: list[str], header: str | None) -> bool:
    return Allowlist(patterns).allows(header)


@pytest.mark.parametrize(
    "header",
    [
        "https://example.com",
        "https://EXAMPLE.com",  # hosts are case-insensitive
        "HTTPS://example.com",
        "https://example.com:443",  # the scheme's default port, written out
        "https://example.com/",
    ],
)
def test_exact_origin_matches(header: str) -> None:
    assert allows(["https://example.com"], header)


@pytest.mark.parametrize(
    "header",
    [
        "http://example.com",  # another scheme
        "https://example.com:8443",  # another port
        "https://www.example.com",  # a subdomain needs a wildcard
        "https://example.com.evil.net",
        "https://evilexample.com",
        "https://example.co",
        "null",  # sandboxed iframes, file:// pages
        "",
        "example.com",
        "https://",
    ],
)
def test_other_origins_do_not_match(header: str) -> None:
    assert not allows(["https://example.com"], header)


def test_missing_origin_is_refused_only_when_a_list_is_set() -> None:
    assert not allows(["https://example.com"], None)
    assert allows([], None)
    assert allows([], "https://anything.test")


def test_wildcard_matches_one_or_more_labels_but_not_the_bare_domain() -> None:
    patterns = ["https://*.example.com"]
    assert allows(patterns, "https://a.example.com")
    assert allows(patterns, "https://a.b.Example.COM")
    assert not allows(patterns, "https://example.com")
    assert not allows(patterns, "https://aexample.com")
    assert not allows(patterns, "http://a.example.com")
    assert not allows(patterns, "https://a.example.com:444")


def test_explicit_ports() -> None:
    assert allows(["http://localhost:3000"], "http://localhost:3000")
    assert not allows(["http://localhost:3000"], "http://localhost")
    assert allows(["http://localhost"], "http://localhost:80")
    assert allows(["http://127.0.0.1:8080", "http://[::1]:8080"], "http://[::1]:8080")


def test_any_of_several_patterns() -> None:
    patterns = ["https://example.com", "https://*.example.org", "http://localhost:3000"]
    assert allows(patterns, "https://x.example.org")
    assert allows(patterns, "http://localhost:3000")
    assert not allows(patterns, "https://example.org")


@pytest.mark.parametrize(
    "pattern",
    [
        "example.com",
        "https://ex*ample.com",
        "https://a.*.example.com",
        "https://*",
        "*.example.com",
        "https://example.com/path",
        "https://example.com:99999",
    ],
)
def test_invalid_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError):
        origins.parse_pattern(pattern)
