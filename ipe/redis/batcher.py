"""Lua script calls of many greenlets sent together: `Batcher` gathers the calls made while a
round trip is under way and sends them in one pipeline, and Redis runs them in the order they
were made.

A thousand sockets joining one presence channel at once would otherwise cost a thousand round
trips one after another (each join is one script), or a thousand pooled connections. Here the
first call goes out at once and the calls that arrive meanwhile wait for the next batch: one
round trip per batch, whatever the number of callers. Calls are answered in the order they
were made, which is also the order Redis ran them in (one connection per server carries a
batch, in order), so that callers can act on the answers in Redis's order.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event

from ipe.redis.link import REDIS_ERRORS

if TYPE_CHECKING:
    from ipe.redis.link import RedisLink
    from ipe.redis.scripts import Script

BATCH = 256  # script calls per pipeline


class Batcher:
    """Script calls, one pipeline per round trip, answered in the order they were made."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self._queue: deque[tuple[Script, dict[str, Any], gevent.event.AsyncResult]] = deque()
        self._runner: gevent.Greenlet | None = None

    def call(self, script: Script, **named: Any) -> Any:
        """Run `script` with these arguments; its answer, or the Redis error it met."""
        result = gevent.event.AsyncResult()
        self._queue.append((script, named, result))
        if self._runner is None:
            self._runner = gevent.spawn(self._run)
        return result.get()

    def _run(self) -> None:
        queue = self._queue
        try:
            while queue:
                batch = [queue.popleft() for _ in range(min(len(queue), BATCH))]
                try:
                    replies = self._send(batch)
                except REDIS_ERRORS as exc:
                    for _script, _named, result in batch:
                        result.set_exception(exc)
                    continue
                # Answered in order: each caller resumes in this order (gevent runs woken
                # greenlets first come, first served).
                for (_script, _named, result), reply in zip(batch, replies, strict=True):
                    if isinstance(reply, Exception):
                        result.set_exception(reply)
                    else:
                        result.set(reply)
        except BaseException as exc:  # never leave a caller waiting forever
            while queue:
                queue.popleft()[2].set_exception(exc)
            raise
        finally:
            self._runner = None

    def _send(self, batch: list[tuple[Script, dict[str, Any], gevent.event.AsyncResult]]) -> Any:
        client = self.link.client
        if len(batch) == 1:
            script, named, _result = batch[0]
            return [script(client, **named)]
        pipe = client.pipeline() if self.link.config.cluster else client.pipeline(False)
        for script, named, _result in batch:
            script.queue(pipe, **named)
        return pipe.execute(raise_on_error=False)
