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
    ) -> None:
        """Send one message (see `ipe.hub` for kinds) to every node; to this one unless `here`
        is False (it was served already). A member event carries its roster change's
        `version` (ipe.presence)."""
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

    def take_tallies(self) -> tuple[int, int]:
        """(Pub/Sub messages received, dropped) since the last call, for ipe.metrics."""
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
    ) -> None:
        if here:
            self.hub.dispatch(app_id, kind, target, payload, exclude, version)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def ready(self) -> bool:
        return True

    def take_tallies(self) -> tuple[int, int]:
        return 0, 0  # no Pub/Sub in one process
