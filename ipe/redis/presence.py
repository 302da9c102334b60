"""Who is in each channel across every node, kept in Redis: the `Presence` store of a cluster.

Layout (one app's keys share the hash tag `{prefix:app_id}`, so that every transition is one
atomic Lua script on one Redis Cluster slot; the app's Pub/Sub channel is on its shard too):

  {P:A}:subs               hash  channel -> subscriptions on every node
  {P:A}:sockets:<channel>  hash  user_id -> member sockets on every node
  {P:A}:members:<channel>  hash  user_id -> user_info (JSON)
  {P:A}:online             hash  user_id -> signed-in sockets on every node
  {P:A}:ver                hash  channel -> version of its roster's last change (µs)
  {P:A}:node:<N>:subs      hash  channel -> node N's share of `subs`
  {P:A}:node:<N>:members   hash  "<channel>\\n<user_id>" -> node N's share of `sockets`
  {P:A}:node:<N>:online    hash  user_id -> node N's share of `online`
  {P:A}:node:<N>:reg       string: N registered its share since Redis last lost it
  {P:A}:nodes              set   nodes that hold a share (where janitors look)
  {P:A}:reaped:<N>         string: N was declared dead and its share removed (expires)

Node N's share is what N alone may change while it lives, and what a janitor removes at once
(`reap`) when N's heartbeat (`ipe.redis.janitor`) has expired. Every count that drives an event
is cluster-wide, so `member_added`, `channel_vacated` and the rest fire once per cluster.

This process also keeps its own share in memory (`local`, an `InMemoryPresence`): it answers
when Redis cannot, and `restore` writes it back after Redis restarted or was unreachable.
A change waits for a running `restore`, and a `restore` for the changes under way, so that the
share it writes is what Redis would hold.

Every change is one script call, and the calls of all greenlets go out together (`Batcher`:
one pipeline per round trip, run by Redis in the order they were made), so that a thousand
sockets joining at once cost a few round trips, not a thousand one after another. No lock is
held across a round trip: the changes of one channel (or of one user's sign-ins) take tickets
in the order they are sent, and each is answered only once the ones before it are done
(`serial` spans the caller's use of the answer too), so that this node's member events of a
channel leave in the order of their versions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import gevent
import gevent.event

from ipe import protocol
from ipe.presence import InMemoryPresence, Joined
from ipe.redis import keys
from ipe.redis.batcher import Batcher
from ipe.redis.scripts import Script

if TYPE_CHECKING:
    from ipe.redis.link import RedisLink

log = logging.getLogger(__name__)

T = TypeVar("T")

# A roster change's version: Redis's clock in microseconds, bumped to stay increasing per
# channel (ipe.presence). Lua 5.1 prints numbers with %.14g, so it is formatted by hand.
_BUMP = r"""
local function bump(k, ch)
  local t = redis.call('TIME')
  local v = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('HGET', k .. ':ver', ch) or '0')
  if v <= last then v = last + 1 end
  redis.call('HSET', k .. ':ver', ch, string.format('%.0f', v))
  return v
end
"""

# Helpers shared by the scripts that move a whole share (restore, reap).
_PRELUDE = (
    _BUMP
    + r"""
local k, node = ARGV[1], ARGV[2]
local mine = k .. ':node:' .. node
local function split(f)
  local p = string.find(f, '\n', 1, true)
  return string.sub(f, 1, p - 1), string.sub(f, p + 1)
end
local function at_subs(f) return k .. ':subs', f end
local function at_members(f) local ch, u = split(f) return k .. ':sockets:' .. ch, u end
local function at_online(f) return k .. ':online', f end
-- Replace node N's counts in `mine_key` by `new` (field -> n), keeping the cluster totals
-- right; return the fields whose total went from 0 to more (up) and from more to 0 (down),
-- and each field whose total changed with its new total (flat: field, total, ...).
local function replace(mine_key, new, locate)
  local before, up, down, totals = {}, {}, {}, {}
  local old = redis.call('HGETALL', mine_key)
  for i = 1, #old, 2 do
    local key, field = locate(old[i])
    local total = tonumber(redis.call('HGET', key, field) or '0')
    before[old[i]] = total
    local left = total - tonumber(old[i + 1])
    if left > 0 then redis.call('HSET', key, field, left) else redis.call('HDEL', key, field) end
  end
  redis.call('DEL', mine_key)
  for f, n in pairs(new) do
    local key, field = locate(f)
    local total = redis.call('HINCRBY', key, field, n)
    if before[f] == nil then before[f] = total - n end
    redis.call('HSET', mine_key, f, n)
  end
  for f, b in pairs(before) do
    local key, field = locate(f)
    local after = tonumber(redis.call('HGET', key, field) or '0')
    if b <= 0 and after > 0 then up[#up + 1] = f
    elseif b > 0 and after <= 0 then down[#down + 1] = f end
    if after ~= b then
      totals[#totals + 1] = f
      totals[#totals + 1] = math.max(after, 0)
    end
  end
  return up, down, totals
end
local function forget_members(removed)
  for _, f in ipairs(removed) do
    local ch, u = split(f)
    redis.call('HDEL', k .. ':members:' .. ch, u)
  end
end
-- The versions of the roster changes in `fields` ("channel\nuser"), in order.
local function versions(fields)
  local out = {}
  for i, f in ipairs(fields) do
    local ch = split(f)
    out[i] = bump(k, ch)
  end
  return out
end
"""
)

# -> the new total
COUNT_UP = Script(
    "count_up",
    r"""
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HINCRBY', ARGV[4], ARGV[5], 1)
return redis.call('HINCRBY', ARGV[2], ARGV[3], 1)
""",
    keys=("nodes",),
    args=("node", "total_key", "field", "share_key", "share_field"),
)

# -> the new total, -1 when this node had nothing counted (Redis lost it and the restore
# has not run yet).
COUNT_DOWN = Script(
    "count_down",
    r"""
local mine = redis.call('HINCRBY', ARGV[3], ARGV[4], -1)
if mine <= 0 then redis.call('HDEL', ARGV[3], ARGV[4]) end
if mine < 0 then return -1 end
local total = redis.call('HINCRBY', ARGV[1], ARGV[2], -1)
if total <= 0 then redis.call('HDEL', ARGV[1], ARGV[2]) end
return total
""",
    keys=("nodes",),
    args=("total_key", "field", "share_key", "share_field"),
)

# -> {sockets of the user, the roster as a flat list, the roster's version, the channel's
# subscriptions}, or 0 when the user is new and the channel already has max_members users
# (nothing changed): the member limit is checked where the roster changes, so concurrent joins
# on many nodes cannot pass it. The socket's subscription is counted in the same step (as
# COUNT_UP does), so that a join costs one round trip.
JOIN = Script(
    "join",
    _BUMP
    + r"""
if redis.call('HEXISTS', ARGV[2], ARGV[3]) == 0
   and redis.call('HLEN', ARGV[2]) >= tonumber(ARGV[10]) then
  return 0
end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HINCRBY', ARGV[4], ARGV[5], 1)
local n = redis.call('HINCRBY', ARGV[2], ARGV[3], 1)
redis.call('HSET', ARGV[6], ARGV[3], ARGV[7])
local v
if n == 1 then v = bump(ARGV[8], ARGV[9])
else v = tonumber(redis.call('HGET', ARGV[8] .. ':ver', ARGV[9]) or '0') end
redis.call('HINCRBY', ARGV[12], ARGV[9], 1)
local subs = redis.call('HINCRBY', ARGV[11], ARGV[9], 1)
return {n, redis.call('HGETALL', ARGV[6]), v, subs}
""",
    keys=("nodes",),
    args=(
        "node",
        "sockets_key",
        "user_id",
        "share_key",
        "share_field",
        "members_key",
        "user_info",
        "tag",
        "channel",
        "max_members",
        "subs_key",
        "subs_share_key",
    ),
)

# -> {sockets of the user left (-1: this node had none counted), the change's version or 0}
LEAVE = Script(
    "leave",
    _BUMP
    + r"""
local mine = redis.call('HINCRBY', ARGV[3], ARGV[4], -1)
if mine <= 0 then redis.call('HDEL', ARGV[3], ARGV[4]) end
if mine < 0 then return {-1, 0} end
local total = redis.call('HINCRBY', ARGV[1], ARGV[2], -1)
if total > 0 then return {total, 0} end
redis.call('HDEL', ARGV[1], ARGV[2])
redis.call('HDEL', ARGV[5], ARGV[2])
return {total, bump(ARGV[6], ARGV[7])}
""",
    keys=("nodes",),
    args=("sockets_key", "user_id", "share_key", "share_field", "members_key", "tag", "channel"),
)

# snapshot: JSON {s: {ch: n}, m: {"ch\nuser": n}, i: {"ch\nuser": info}, o: {user: n}}.
# -> {kept, reaped, occupied, vacated, added, removed, online, offline, versions of added,
# versions of removed, subscription totals changed}
RESTORE = Script(
    "restore",
    _PRELUDE
    + r"""
local snap = cjson.decode(ARGV[3])
local kept = redis.call('EXISTS', mine .. ':reg')
local reaped = redis.call('EXISTS', k .. ':reaped:' .. node)
local occupied, vacated, totals = replace(mine .. ':subs', snap.s, at_subs)
local added, removed = replace(mine .. ':members', snap.m, at_members)
for f, info in pairs(snap.i) do
  local ch, u = split(f)
  redis.call('HSET', k .. ':members:' .. ch, u, info)
end
forget_members(removed)
local online, offline = replace(mine .. ':online', snap.o, at_online)
redis.call('SET', mine .. ':reg', 1)
redis.call('DEL', k .. ':reaped:' .. node)
redis.call('SADD', KEYS[1], node)
return {kept, reaped, occupied, vacated, added, removed, online, offline,
        versions(added), versions(removed), totals}
""",
    keys=("nodes",),
    args=("tag", "node", "snapshot"),
)

# -> {vacated, removed, offline, versions of removed, subscription totals changed}; empty
# when another janitor reaped the node first (SREM is the claim: exactly one script sees it
# succeed). tombstone: seconds the node's `reaped` marker lives.
REAP = Script(
    "reap",
    _PRELUDE
    + r"""
if redis.call('SREM', KEYS[1], node) == 0 then return {{}, {}, {}, {}, {}} end
local _, vacated, totals = replace(mine .. ':subs', {}, at_subs)
local _, removed = replace(mine .. ':members', {}, at_members)
forget_members(removed)
local _, offline = replace(mine .. ':online', {}, at_online)
redis.call('DEL', mine .. ':reg')
redis.call('SET', k .. ':reaped:' .. node, 1, 'EX', ARGV[3])
return {vacated, removed, offline, versions(removed), totals}
""",
    keys=("nodes",),
    args=("tag", "node", "tombstone"),
)


class Changes(NamedTuple):
    """Cluster-wide transitions of one app caused by moving a node's whole share."""

    occupied: list[str]
    vacated: list[str]
    added: list[tuple[str, str, Any, int]]  # channel, user_id, user_info, version
    removed: list[tuple[str, str, int]]  # channel, user_id, version
    online: list[str]
    offline: list[str]
    counts: list[tuple[str, int]]  # channel, subscriptions after: every count that changed


def _text(values: list[bytes]) -> list[str]:
    return [v.decode() for v in values]


def _member(field: str) -> tuple[str, str]:
    channel, _, user_id = field.partition("\n")
    return channel, user_id


UNLIMITED = 1 << 62  # a member limit that is never reached


class _Turn:
    """The changes of one key (a channel, a user's sign-ins) under way on this node: each
    takes a ticket as it starts, in the order Redis will run them (`Batcher`), and acts on
    its answer only once the changes before it are done."""

    __slots__ = ("issued", "done", "finished", "holders", "waiters")

    def __init__(self) -> None:
        self.issued = 0  # tickets given out
        self.done = 0  # every ticket below this one is done
        self.finished: set[int] = set()  # done out of order (a greenlet killed while waiting)
        self.holders: dict[Any, int] = {}  # greenlet -> its ticket
        self.waiters: dict[int, gevent.event.Event] = {}

    def wait(self, ticket: int) -> None:
        """Return once every ticket before `ticket` is done."""
        while self.done < ticket:
            self.waiters.setdefault(ticket, gevent.event.Event()).wait()

    def finish(self, ticket: int) -> None:
        self.finished.add(ticket)
        while self.done in self.finished:
            self.finished.discard(self.done)
            self.done += 1
        waiter = self.waiters.pop(self.done, None)
        if waiter is not None:
            waiter.set()


class RedisPresence:
    """The Presence store for many nodes: counts and rosters in Redis, this node's share here."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.node = link.node
        self.local = InMemoryPresence()
        self.batcher = Batcher(link)
        self._turns: dict[tuple[str, str, str], _Turn] = {}  # only keys changing now
        self._changers: dict[Any, int] = {}  # greenlet -> its changes under way
        self._quiet = gevent.event.Event()  # set while no change is under way
        self._quiet.set()
        self._restoring: gevent.event.Event | None = None  # set when the restore is done

    def _k(self, app_id: str) -> str:
        return keys.app_tag(self.link.prefix, app_id)

    # --- changes in order, per key --------------------------------------------------------------

    def serial(self, app_id: str, channel: str) -> AbstractContextManager[Any]:
        return self._turn(app_id, "channel", channel)

    @contextmanager
    def _turn(self, app_id: str, kind: str, name: str) -> Iterator[None]:
        """A change of one channel ("channel") or of one user's sign-ins ("user"), from its
        Redis call to what its caller does with the answer; entered again by the greenlet
        making it, it is the same change."""
        key = (app_id, kind, name)
        current = gevent.getcurrent()
        turn = self._turns.get(key)
        if turn is not None and current in turn.holders:
            yield
            return
        # A restore's snapshot must hold still; one waiting for this greenlet's outer
        # change would never start, so that one goes on.
        while self._restoring is not None and current not in self._changers:
            self._restoring.wait()
        turn = self._turns.get(key)
        if turn is None:
            turn = self._turns[key] = _Turn()
        ticket = turn.issued
        turn.issued += 1
        turn.holders[current] = ticket
        self._changers[current] = self._changers.get(current, 0) + 1
        self._quiet.clear()
        try:
            yield
            turn.wait(ticket)
        finally:
            del turn.holders[current]
            turn.finish(ticket)
            if turn.done == turn.issued:
                del self._turns[key]
            if self._changers[current] == 1:
                del self._changers[current]
            else:
                self._changers[current] -= 1
            if not self._changers:
                self._quiet.set()

    def _answer(self, app_id: str, kind: str, name: str, answer: T) -> T:
        """`answer` once the changes of the key made before this one are done, so that the
        caller acts on answers (member events, counts) in the order Redis gave them."""
        turn = self._turns[(app_id, kind, name)]
        turn.wait(turn.holders[gevent.getcurrent()])
        return answer

    # --- transitions --------------------------------------------------------------------------

    def _tally(self, app_id: str, kind: str, member: str, up: bool) -> int | None:
        """Move the cluster-wide tally `kind` ("subs" or "online") of `member` one up or down.

        Returns the tally after; -1 when Redis held nothing of this node's for it (it lost
        this node's share, which the restore writes back); None when Redis could not be asked,
        and this node's own answer stands. Called in `member`'s turn.
        """
        k = self._k(app_id)
        named = {
            "nodes": keys.nodes(k),
            "total_key": keys.tally(k, kind),
            "field": member,
            "share_key": keys.node_share(k, self.node, kind),
            "share_field": member,
        }
        call = self.batcher.call
        if up:
            return self.link.either(
                lambda _client: int(call(COUNT_UP, node=self.node, **named)), _unknown
            )
        return self.link.either(lambda _client: int(call(COUNT_DOWN, **named)), _unknown)

    def subscribe(self, app_id: str, channel: str) -> int:
        with self._turn(app_id, "channel", channel):
            here = self.local.subscribe(app_id, channel)
            total = self._tally(app_id, "subs", channel, up=True)
            return self._answer(app_id, "channel", channel, here if total is None else total)

    def unsubscribe(self, app_id: str, channel: str) -> int:
        with self._turn(app_id, "channel", channel):
            here = self.local.unsubscribe(app_id, channel)
            total = self._tally(app_id, "subs", channel, up=False)
            if total is None:
                total = here
            elif total < 0:
                # The cluster-wide count is unknown until the restore: 0 would announce a
                # vacancy that other nodes' subscribers may contradict.
                total = max(here, 1)
            return self._answer(app_id, "channel", channel, total)

    def join(
        self, app_id: str, channel: str, user_id: str, user_info: Any, max_members: int
    ) -> Joined | None:
        with self._turn(app_id, "channel", channel):
            k = self._k(app_id)

            def remote(_client: Any) -> Joined | None:
                joined = self.batcher.call(
                    JOIN,
                    nodes=keys.nodes(k),
                    node=self.node,
                    sockets_key=keys.sockets(k, channel),
                    user_id=user_id,
                    share_key=keys.node_share(k, self.node, "members"),
                    share_field=keys.member_field(channel, user_id),
                    members_key=keys.members(k, channel),
                    user_info=protocol.dumps(user_info),
                    tag=k,
                    channel=channel,
                    max_members=max_members,
                    subs_key=keys.subs(k),
                    subs_share_key=keys.node_share(k, self.node, "subs"),
                )
                if not joined:
                    return None  # the cluster's roster is full
                # This node's share follows what Redis accepted, whatever its own count says.
                self.local.add_member(app_id, channel, user_id, user_info, UNLIMITED)
                self.local.subscribe(app_id, channel)
                count, flat, version, subs = joined
                return Joined(count == 1, _encoded_roster(flat), int(version), int(subs))

            def local() -> Joined | None:
                return self.local.join(app_id, channel, user_id, user_info, max_members)

            return self._answer(app_id, "channel", channel, self.link.either(remote, local))

    def leave(self, app_id: str, channel: str, user_id: str) -> tuple[bool, int]:
        with self._turn(app_id, "channel", channel):
            last_here = self.local.leave(app_id, channel, user_id)
            k = self._k(app_id)

            def remote(_client: Any) -> tuple[bool, int]:
                total, version = self.batcher.call(
                    LEAVE,
                    nodes=keys.nodes(k),
                    sockets_key=keys.sockets(k, channel),
                    user_id=user_id,
                    share_key=keys.node_share(k, self.node, "members"),
                    share_field=keys.member_field(channel, user_id),
                    members_key=keys.members(k, channel),
                    tag=k,
                    channel=channel,
                )
                return total == 0, int(version)

            left = self.link.either(remote, lambda: last_here)
            return self._answer(app_id, "channel", channel, left)

    def user_online(self, app_id: str, user_id: str) -> bool:
        with self._turn(app_id, "user", user_id):
            first_here = self.local.user_online(app_id, user_id)
            total = self._tally(app_id, "online", user_id, up=True)
            return self._answer(
                app_id, "user", user_id, first_here if total is None else total == 1
            )

    def user_offline(self, app_id: str, user_id: str) -> bool:
        with self._turn(app_id, "user", user_id):
            last_here = self.local.user_offline(app_id, user_id)
            total = self._tally(app_id, "online", user_id, up=False)
            return self._answer(
                app_id, "user", user_id, last_here if total is None else total == 0
            )

    # --- reads --------------------------------------------------------------------------------

    def members(self, app_id: str, channel: str) -> dict[str, Any]:
        key = keys.members(self._k(app_id), channel)
        return self.link.either(
            lambda client: _roster(client.hgetall(key)),
            lambda: self.local.members(app_id, channel),
        )

    def subscription_count(self, app_id: str, channel: str) -> int:
        key = keys.subs(self._k(app_id))
        return self.link.either(
            lambda client: int(client.hget(key, channel) or 0),
            lambda: self.local.subscription_count(app_id, channel),
        )

    def channels(self, app_id: str) -> dict[str, int]:
        key = keys.subs(self._k(app_id))

        def remote(client: Any) -> dict[str, int]:
            flat = client.hgetall(key)
            return {ch.decode(): int(n) for ch, n in flat.items() if int(n) > 0}

        return self.link.either(remote, lambda: self.local.channels(app_id))

    def online(self, app_id: str, user_ids: tuple[str, ...]) -> set[str]:
        if not user_ids:
            return set()
        key = keys.online(self._k(app_id))

        def remote(client: Any) -> set[str]:
            counts = client.hmget(key, list(user_ids))
            return {uid for uid, n in zip(user_ids, counts, strict=True) if n and int(n) > 0}

        return self.link.either(remote, lambda: self.local.online(app_id, user_ids))

    # --- whole shares (ipe.redis.janitor) -----------------------------------------------------

    def nodes(self, app_id: str) -> set[str]:
        """Every other node holding a share of the app (Redis errors propagate)."""
        members = self.link.client.smembers(keys.nodes(self._k(app_id)))
        return {n.decode() for n in members} - {self.node}

    def restore(self, app_id: str) -> tuple[str, Changes]:
        """Write this node's share of an app to Redis in place of what Redis holds for it.

        Returns (seen, changes). `seen` says who had seen the old share: "others" when Redis
        had kept it (the changes happened while messages could not cross), "everyone" when a
        janitor had reaped it and told every node, this one included, that its members left;
        "" when Redis had lost it and nobody's view changed.
        """
        while self._restoring is not None:
            self._restoring.wait()
        done = self._restoring = gevent.event.Event()
        try:
            self._quiet.wait()  # the changes under way reach Redis first
            share = self.local.share(app_id)
            infos = {}
            counts = {}
            for channel, user_id, n, info in share.members:
                field = keys.member_field(channel, user_id)
                counts[field] = n
                infos[field] = protocol.dumps(info)
            snapshot = json.dumps(
                {"s": share.subscriptions, "m": counts, "i": infos, "o": share.online},
                separators=(",", ":"),
            )
            k = self._k(app_id)
            result = RESTORE(
                self.link.client, nodes=keys.nodes(k), tag=k, node=self.node, snapshot=snapshot
            )
        finally:
            self._restoring = None
            done.set()
        kept, reaped, occupied, vacated, added, removed, online, offline = result[:8]
        vadded, vremoved, totals = result[8:]
        added_members = []
        for field, version in zip(_text(added), vadded, strict=True):
            channel, user_id = _member(field)
            added_members.append((channel, user_id, json.loads(infos[field]), int(version)))
        changes = Changes(
            _text(occupied),
            _text(vacated),
            added_members,
            _removed(removed, vremoved),
            _text(online),
            _text(offline),
            _totals(totals),
        )
        return ("everyone" if reaped else "others" if kept else ""), changes

    def reap(self, app_id: str, node: str, tombstone: int) -> Changes:
        """Remove a dead node's share of an app; empty when another janitor did it first."""
        k = self._k(app_id)
        vacated, removed, offline, versions, totals = REAP(
            self.link.client, nodes=keys.nodes(k), tag=k, node=node, tombstone=tombstone
        )
        return Changes(
            [],
            _text(vacated),
            [],
            _removed(removed, versions),
            [],
            _text(offline),
            _totals(totals),
        )


def _unknown() -> None:
    """Redis could not be asked: the caller's own answer stands."""
    return None


def _removed(fields: list[bytes], versions: list[int]) -> list[tuple[str, str, int]]:
    """(channel, user_id, version) of each removed member."""
    return [(*_member(f), int(v)) for f, v in zip(_text(fields), versions, strict=True)]


def _totals(flat: list[Any]) -> list[tuple[str, int]]:
    """(channel, subscriptions) pairs from a script's flat list."""
    return [(ch.decode(), int(n)) for ch, n in zip(flat[::2], flat[1::2], strict=True)]


def _encoded_roster(flat: list[bytes]) -> str:
    """subscription_succeeded data from HGETALL's flat list, user_infos pasted as stored."""
    text = [v.decode() for v in flat]
    return protocol.presence_data_encoded(list(zip(text[::2], text[1::2], strict=True)))


def _roster(flat: Any) -> dict[str, Any]:
    """user_id -> user_info from HGETALL (a dict from redis-py, a flat list from Lua)."""
    if isinstance(flat, dict):
        pairs = flat.items()
    else:
        pairs = zip(flat[::2], flat[1::2], strict=True)
    return {user.decode(): json.loads(info) for user, info in pairs}
