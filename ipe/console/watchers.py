"""This process's console streams: who watches which app, and the last records of each.

A stream is one Server-Sent-Events response; its greenlet waits on a bounded queue. A record
is encoded once and offered to every stream of its app without blocking: a stream whose
queue is full loses the record (counted, and the page says so). Nothing is kept for an app
that nobody watches here.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from typing import Any

import gevent.queue

MAX_STREAMS = 16  # console streams open at once in this process; more get 503
RECENT = 500  # records kept per watched app, replayed to a stream that opens
QUEUE = 2000  # records waiting for one slow page before it loses some
END = b""  # queued to end a stream


class Stream:
    """One open event stream of one app."""

    def __init__(self, app_id: str) -> None:
        self.app_id = app_id
        self.queue: gevent.queue.Queue[bytes] = gevent.queue.Queue(QUEUE)
        self.dropped = 0


class Watchers:
    """Open streams per app and each watched app's recent records; bounded in every way."""

    def __init__(self, on_change: Callable[[str, bool], None]) -> None:
        self.streams: dict[str, set[Stream]] = {}
        self.recent: dict[str, deque[bytes]] = {}
        self.on_change = on_change  # (app_id, watched) when an app gains its first/loses its last

    def count(self) -> int:
        """Streams open in this process."""
        return sum(len(s) for s in self.streams.values())

    def open(self, app_id: str) -> Stream | None:
        """A new stream of `app_id` with the recent records queued; None when at the cap."""
        if self.count() >= MAX_STREAMS:
            return None
        stream = Stream(app_id)
        for line in self.recent.get(app_id, ()):
            stream.queue.put_nowait(line)
        first = app_id not in self.streams
        self.streams.setdefault(app_id, set()).add(stream)
        if first:
            self.recent[app_id] = deque(maxlen=RECENT)
            self.on_change(app_id, True)
        return stream

    def close(self, stream: Stream) -> None:
        """Forget a stream; the app's records go with its last one."""
        streams = self.streams.get(stream.app_id)
        if streams is None or stream not in streams:
            return
        streams.discard(stream)
        if not streams:
            del self.streams[stream.app_id]
            self.recent.pop(stream.app_id, None)
            self.on_change(stream.app_id, False)

    def close_all(self) -> None:
        """Tell every stream to end (an empty line is the signal)."""
        for streams in tuple(self.streams.values()):
            for stream in tuple(streams):
                while True:
                    try:
                        stream.queue.put_nowait(END)
                        break
                    except gevent.queue.Full:
                        stream.queue.get_nowait()  # make room: the page is leaving anyway

    def deliver(self, app_id: str, record: dict[str, Any]) -> None:
        """Encode one record once and offer it to every stream of its app."""
        streams = self.streams.get(app_id)
        if not streams:
            return
        line = b"data: " + json.dumps(record, separators=(",", ":")).encode() + b"\n\n"
        self.recent[app_id].append(line)
        for stream in streams:
            try:
                stream.queue.put_nowait(line)
            except gevent.queue.Full:
                stream.dropped += 1
