"""ipe.backoff: the delay doubles after each failure, stops at its cap, and starts over."""

from __future__ import annotations

from ipe.backoff import Backoff


def test_doubles_up_to_the_cap_then_stays():
    backoff = Backoff(0.5, 5.0)
    assert [backoff.next() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_reset_starts_over():
    backoff = Backoff(1.0, 60.0)
    backoff.next(), backoff.next(), backoff.next()
    backoff.reset()
    assert backoff.next() == 1.0


def test_a_first_delay_above_the_cap_is_capped():
    assert Backoff(10.0, 2.0).next() == 2.0


def test_jitter_only_shortens_and_stays_within_its_fraction():
    backoff = Backoff(1.0, 8.0, jitter=0.2)
    for expected in (1.0, 2.0, 4.0, 8.0, 8.0):
        delay = backoff.next()
        assert 0.8 * expected <= delay <= expected
