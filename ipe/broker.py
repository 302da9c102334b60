"""Fan-out between processes: every publish goes through a broker, then to `Hub.dispatch`.

`LocalBroker` hands messages straight to this process's hub (one process, no other service).
`ipe.redis.broker.RedisBroker` carries them through Redis Pub/Sub to every node.
"""

from __future__ import annotations

from typing import Protocol

from ipe.hub import Hub


class Broker(Protocol):
    """The interface every broker implements."""

    def publish(
        self,
        app_id: str,
        kind: str,
        target: str,
        payload: bytes = b"",
        exclude: str | None = None,
        here: bool = True,
        *,
        version: int | None = None,
        ordered: bool = False,
    ) -> None:
        """Send one message (see `ipe.hub` for kinds) to every node; to this one unless `here`
        is False (it was served already). A member event carries its roster change's
        `version` (ipe.presence). An `ordered` message (and every member event and watchlist
        notice) reaches this node too in the one order every node hears: two nodes' changes
        of one roster or count must end the same everywhere."""
        ...

    def start(self) -> None:
        """Begin receiving (once per process, after fork)."""
        ...

    def stop(self) -> None:
        """Stop receiving and release connections."""
        ...

    def ready(self) -> bool:
        """True while messages can cross to every node."""
        ...

    def routed(self, app_id: str, channel: str) -> None:
        """Return once what other nodes publish to `channel` reaches this one (bounded)."""
        ...

    def take_tallies(self) -> tuple[int, int, int, int]:
        """(Pub/Sub messages received, dropped, published, channels subscribed) since the
        last call (the last one a level), for ipe.metrics."""
        ...


class LocalBroker:
    """The in-process broker: publishing is delivering."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def publish(
        self,
        app_id: str,
        kind: str,
        target: str,
        payload: bytes = b"",
        exclude: str | None = None,
        here: bool = True,
        *,
        version: int | None = None,
        ordered: bool = False,
    ) -> None:
        if here:
            self.hub.dispatch(app_id, kind, target, payload, exclude, version)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def ready(self) -> bool:
        return True

    def routed(self, app_id: str, channel: str) -> None:
        pass

    def take_tallies(self) -> tuple[int, int, int, int]:
        return 0, 0, 0, 0  # no Pub/Sub in one process
