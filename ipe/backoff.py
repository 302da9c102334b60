"""The one retry back-off: a delay that doubles after every failure, up to a cap."""

from __future__ import annotations

import random


class Backoff:
    """Delays between attempts: `first`, doubling each time up to `cap`; `reset` starts over.

    With `jitter` (a fraction), each delay is shortened by up to that much at random, so that
    many waiters that failed together do not all try again at the same moment.
    """

    __slots__ = ("first", "cap", "jitter", "current")

    def __init__(self, first: float, cap: float, jitter: float = 0.0) -> None:
        self.first = min(first, cap)
        self.cap = cap
        self.jitter = jitter
        self.current = self.first

    def next(self) -> float:
        """The delay to wait now; the following one is twice as long (at most `cap`)."""
        delay = self.current
        self.current = min(delay * 2, self.cap)
        if self.jitter:
            delay *= random.uniform(1.0 - self.jitter, 1.0)
        return delay

    def reset(self) -> None:
        """After a success: the next failure waits `first` again."""
        self.current = self.first
