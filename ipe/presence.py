"""Who is in each channel, cluster-wide: subscription counts, presence members, online users.

The in-process store below serves one process. A Redis store with the same methods makes
the same answers true across every node; callers never know which one they have.
Every answer that drives a webhook or a member event is a *transition* (first/last), so that
each one fires once per cluster. Subscribing and unsubscribing answer the channel's count
after the change, cluster-wide: 1 is its first subscriber, 0 its last gone, and the number
itself is what Pusher's subscription counting (ipe.subscription_count) announces.

Each change of a presence roster has a *version*, increasing per channel, and `join` returns
the roster with the version it reflects. Member events carry their change's version, so a
socket applies only those newer than its roster: an event still on its way between nodes
when the roster was read is not applied twice, and a stale `member_removed` cannot remove a
member who has since come back. Versions are microseconds of wall-clock time, bumped to stay
increasing, so that they keep increasing across a Redis restart that loses the counters.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any, NamedTuple, Protocol

from ipe import protocol


class Joined(NamedTuple):
    """What `Presence.join` answers."""

    first: bool  # the user's first socket on the channel: a member_added is due
    roster: str  # the roster after, as subscription_succeeded data (protocol.presence_data)
    version: int  # the roster version it reflects; this change's when it was one
    count: int  # the channel's subscriptions after, cluster-wide (1: just occupied)


class Presence(Protocol):
    """The interface every store implements."""

    def subscribe(self, app_id: str, channel: str) -> int:
        """Count one subscription; the channel's subscriptions after (1: just occupied)."""
        ...

    def unsubscribe(self, app_id: str, channel: str) -> int:
        """Uncount one subscription; the channel's subscriptions after (0: just vacated)."""
        ...

    def join(
        self, app_id: str, channel: str, user_id: str, user_info: Any, max_members: int
    ) -> Joined | None:
        """Add a member's socket and count its subscription (one step: no `subscribe` for
        it); None, with nothing changed, when a new user would make more than `max_members`
        users."""
        ...

    def leave(self, app_id: str, channel: str, user_id: str) -> tuple[bool, int]:
        """Remove a member's socket: (True if it was the user's last one on the channel, the
        version of that change; 0 when there was none)."""
        ...

    def serial(self, app_id: str, channel: str) -> AbstractContextManager[Any]:
        """Hold while changing a channel's roster and publishing its member event: this
        node's member events of a channel then leave in the order of their versions."""
        ...

    def members(self, app_id: str, channel: str) -> dict[str, Any]:
        """user_id → user_info of a presence channel."""
        ...

    def subscription_count(self, app_id: str, channel: str) -> int:
        """Sockets subscribed to a channel."""
        ...

    def channels(self, app_id: str) -> dict[str, int]:
        """Every occupied channel of an app with its subscription count."""
        ...

    def user_online(self, app_id: str, user_id: str) -> bool:
        """Count one signed-in socket; True if the user just came online."""
        ...

    def user_offline(self, app_id: str, user_id: str) -> bool:
        """Uncount one signed-in socket; True if the user just went offline."""
        ...

    def online(self, app_id: str, user_ids: tuple[str, ...]) -> set[str]:
        """Which of `user_ids` have at least one signed-in socket."""
        ...


class InMemoryPresence:
    """The single-process store: plain dicts, no I/O."""

    def __init__(self) -> None:
        self._subs: dict[str, dict[str, int]] = {}
        self._members: dict[tuple[str, str], dict[str, list[Any]]] = {}
        self._users: dict[tuple[str, str], int] = {}
        self._version = 0  # one clock for every channel: increasing is all a version needs

    def _tick(self) -> int:
        self._version = max(time.time_ns() // 1000, self._version + 1)
        return self._version

    def subscribe(self, app_id: str, channel: str) -> int:
        subs = self._subs.setdefault(app_id, {})
        count = subs.get(channel, 0) + 1
        subs[channel] = count
        return count

    def unsubscribe(self, app_id: str, channel: str) -> int:
        subs = self._subs.get(app_id, {})
        count = subs.get(channel, 0) - 1
        if count > 0:
            subs[channel] = count
            return count
        subs.pop(channel, None)
        return 0

    def join(
        self, app_id: str, channel: str, user_id: str, user_info: Any, max_members: int
    ) -> Joined | None:
        added = self.add_member(app_id, channel, user_id, user_info, max_members)
        if added is None:
            return None
        first, version = added
        roster = protocol.presence_data(self.members(app_id, channel))
        return Joined(first, roster, version, self.subscribe(app_id, channel))

    def add_member(
        self, app_id: str, channel: str, user_id: str, user_info: Any, max_members: int
    ) -> tuple[bool, int] | None:
        """`join`'s roster change alone: (the user's first socket, the version), or None."""
        members = self._members.get((app_id, channel))
        entry = members.get(user_id) if members else None
        if entry is None and members and len(members) >= max_members:
            return None
        if members is None:
            members = self._members[(app_id, channel)] = {}
        if entry is None:
            members[user_id] = [1, user_info]
            return True, self._tick()
        entry[0] += 1
        entry[1] = user_info  # the newest socket's info wins, as in Redis
        return False, self._version

    def serial(self, app_id: str, channel: str) -> AbstractContextManager[Any]:
        return nullcontext()  # nothing here yields: every change is in order already

    def leave(self, app_id: str, channel: str, user_id: str) -> tuple[bool, int]:
        members = self._members.get((app_id, channel))
        entry = members.get(user_id) if members else None
        if entry is None:
            return False, 0
        entry[0] -= 1
        if entry[0] > 0:
            return False, 0
        del members[user_id]  # type: ignore[index]
        if not members:
            del self._members[(app_id, channel)]
        return True, self._tick()

    def members(self, app_id: str, channel: str) -> dict[str, Any]:
        members = self._members.get((app_id, channel), {})
        return {uid: e[1] for uid, e in members.items()}

    def subscription_count(self, app_id: str, channel: str) -> int:
        return self._subs.get(app_id, {}).get(channel, 0)

    def channels(self, app_id: str) -> dict[str, int]:
        return dict(self._subs.get(app_id, {}))

    def user_online(self, app_id: str, user_id: str) -> bool:
        key = (app_id, user_id)
        count = self._users.get(key, 0) + 1
        self._users[key] = count
        return count == 1

    def user_offline(self, app_id: str, user_id: str) -> bool:
        key = (app_id, user_id)
        count = self._users.get(key, 0) - 1
        if count > 0:
            self._users[key] = count
            return False
        self._users.pop(key, None)
        return count == 0

    def online(self, app_id: str, user_ids: tuple[str, ...]) -> set[str]:
        return {uid for uid in user_ids if (app_id, uid) in self._users}

    def share(self, app_id: str) -> Share:
        """Everything counted for one app, to re-register elsewhere (a Redis store's restore)."""
        members = [
            (channel, user_id, entry[0], entry[1])
            for (app, channel), by_user in self._members.items()
            if app == app_id
            for user_id, entry in by_user.items()
        ]
        online = {uid: n for (app, uid), n in self._users.items() if app == app_id}
        return Share(dict(self._subs.get(app_id, {})), members, online)


class Share(NamedTuple):
    """One app's counts: subscriptions per channel, (channel, user, sockets, info), users."""

    subscriptions: dict[str, int]
    members: list[tuple[str, str, int, Any]]
    online: dict[str, int]
