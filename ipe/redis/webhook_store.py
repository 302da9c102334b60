"""Webhook events waiting in Redis, shared by every node: the `WebhookStore` of a cluster.

Layout (one app's keys share the app's hash tag `{prefix:app_id}`, as in `ipe.redis.presence`,
so that every step below is one atomic Lua script on one Redis Cluster slot; `<i>` is the
index of a target in the app's `webhooks` list, the lane "<app_id>/<i>"):

  {P:A}:wh:held        hash   grace key -> "<lanes>\\n<event JSON>" (held for the grace period)
  {P:A}:wh:due         zset   grace key, scored by its due time (Unix seconds)
  {P:A}:wh:ret:<key>   string a return that found nothing to cancel: its emit time (expires)
  {P:A}:wh:q:<i>       list   "<enqueue time>\\n<dedupe key>\\n<event JSON>", oldest first
  {P:A}:wh:dd:<i>      set    dedupe keys of the queued events (one cache_miss per channel)
  {P:A}:wh:fl:<i>      hash   the batch in flight: token, created (ms), events (JSON), n
  {P:A}:wh:lease:<i>   string the node sending lane i (expires after `node_timeout`)

Scripts, each one round trip:
- PASS writes one app's arrivals in emit order (a held event: HSET + ZADD; a return: HDEL +
  ZREM of its held event if there is one — both are dropped — else RPUSH to its lanes and a
  `ret` marker), then releases the held events that are due (ZRANGEBYSCORE, moved into their
  lanes in the same script: whoever runs it first claims them, so each is released once), and
  reports the app's state: next due time, per lane its queue, batch in flight and lease holder.
- TAKE moves up to `max_batch_size` events of a lane into its batch in flight and sets the
  lease, unless a batch is in flight or another node holds the lease: one sender per target,
  one batch at a time, in order. FINISH deletes the batch and the lease; ABANDON gives the
  lease back (shutdown); ADOPT takes over a batch whose lease expired (its node died) or is
  this node's own (restarted under the same IPE_INSTANCE_ID and pid); RENEW extends the
  leases of the batches this node is sending, every `heartbeat_interval`, and reports those
  another node took over meanwhile.

A return can overtake its held event when they come from two nodes (the leave on node A is
written a moment after the return on node B): the return then leaves a `ret` marker with its
emit time, and a held event emitted before it is dropped when it arrives. The return was sent
already, so the receiver gets `member_added` twice but ends with the right state.

Every node looks at every app with webhooks each `heartbeat_interval`, so that holds, queues
and batches left by a node that died or stopped are released, sent and resumed by another;
the node that wrote or finished something looks again at once.

When Redis is unreachable, arrivals wait in this process's memory, in order, and are written
when it is back (`ipe.webhooks` bounds them with `queue_size`: what does not fit is dropped,
counted and logged); batches already in flight go on being sent. Nothing here raises a Redis
error: the link is marked down and its probe tells `ipe.webhooks` when to try again.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import TYPE_CHECKING, Any, NamedTuple

from redis.exceptions import ResponseError

from ipe import protocol
from ipe.redis import keys
from ipe.redis.link import REDIS_ERRORS
from ipe.redis.scripts import Script
from ipe.webhook_store import Arrival, Batch, lane_name

if TYPE_CHECKING:
    from ipe.config import AppConfig
    from ipe.redis.link import RedisLink

log = logging.getLogger(__name__)

_CHUNK = 200  # arrivals per PASS script: bounds the time Redis spends in one script
_RELEASE_LIMIT = 500  # held events one PASS releases; the rest on the next pass, at once

_PUSH = r"""
local w = ARGV[1]
local function push(lanes, t, dedupe, event)
  for i in string.gmatch(lanes, '[^,]+') do
    if dedupe == '' or redis.call('SADD', w .. 'dd:' .. i, dedupe) == 1 then
      redis.call('RPUSH', w .. 'q:' .. i, t .. '\n' .. dedupe .. '\n' .. event)
    end
  end
end
"""

# Every script takes KEYS[1] = w .. 'due' (it routes the call to the app's slot) and
# ARGV[1] = w, the app's webhook key prefix (ipe.redis.keys.webhooks).
_ROUTE = ("due",)

# rest: 7 per arrival: kind ('h' held, 'r' return, 'e' other), grace key, number (held: due
# time; return: marker ttl in ms), lane indexes "0,2", dedupe key, emit time, event JSON.
# -> {cancelled, released, next due or '', size, then per lane: queued, oldest, token, lease}
PASS = Script(
    "webhooks_pass",
    _PUSH
    + r"""
local now, nlanes = tonumber(ARGV[2]), tonumber(ARGV[3])
local cancelled = 0
for a = 5, #ARGV, 7 do
  local kind, key, num, lanes = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local dedupe, at, event = ARGV[a + 4], ARGV[a + 5], ARGV[a + 6]
  if kind == 'h' then
    local ret = redis.call('GET', w .. 'ret:' .. key)
    if ret then redis.call('DEL', w .. 'ret:' .. key) end
    if ret and tonumber(ret) >= tonumber(at) then
      cancelled = cancelled + 1  -- its return was written first (from another node)
    else
      redis.call('HSET', w .. 'held', key, lanes .. '\n' .. event)
      redis.call('ZADD', w .. 'due', num, key)
    end
  elseif kind == 'r' and redis.call('HDEL', w .. 'held', key) == 1 then
    redis.call('ZREM', w .. 'due', key)
    cancelled = cancelled + 1
  else
    if kind == 'r' then redis.call('SET', w .. 'ret:' .. key, at, 'PX', num) end
    push(lanes, at, dedupe, event)
  end
end
local due = redis.call('ZRANGEBYSCORE', w .. 'due', '-inf', now, 'LIMIT', 0, ARGV[4])
for _, key in ipairs(due) do
  redis.call('ZREM', w .. 'due', key)
  local record = redis.call('HGET', w .. 'held', key)
  if record then
    redis.call('HDEL', w .. 'held', key)
    local p = string.find(record, '\n', 1, true)
    push(string.sub(record, 1, p - 1), ARGV[2], '', string.sub(record, p + 1))
  end
end
local size = redis.call('HLEN', w .. 'held')
local first = redis.call('ZRANGE', w .. 'due', 0, 0, 'WITHSCORES')
local report = {cancelled, #due, first[2] or '', 0}
for i = 0, nlanes - 1 do
  local q = w .. 'q:' .. i
  local n = redis.call('LLEN', q)
  local oldest = ''
  if n > 0 then
    local head = redis.call('LINDEX', q, 0)
    oldest = string.sub(head, 1, string.find(head, '\n', 1, true) - 1)
  end
  local flight = redis.call('HMGET', w .. 'fl:' .. i, 'token', 'n')
  size = size + n + tonumber(flight[2] or '0')
  report[#report + 1] = n
  report[#report + 1] = oldest
  report[#report + 1] = flight[1] or ''
  report[#report + 1] = redis.call('GET', w .. 'lease:' .. i) or ''
end
report[4] = size
return report
""",
    keys=_ROUTE,
    args=("w", "now", "lanes", "release_limit"),
    rest="arrivals",
)

# -> events JSON, or false
TAKE = Script(
    "webhooks_take",
    r"""
local w, i = ARGV[1], ARGV[2]
local flight, lease = w .. 'fl:' .. i, w .. 'lease:' .. i
if redis.call('EXISTS', flight) == 1 then return false end
local holder = redis.call('GET', lease)
if holder and holder ~= ARGV[4] then return false end
local items = redis.call('LPOP', w .. 'q:' .. i, ARGV[3])
if not items then return false end
local events = {}
for _, item in ipairs(items) do
  local p = string.find(item, '\n', 1, true)
  local q = string.find(item, '\n', p + 1, true)
  local dedupe = string.sub(item, p + 1, q - 1)
  if dedupe ~= '' then redis.call('SREM', w .. 'dd:' .. i, dedupe) end
  events[#events + 1] = string.sub(item, q + 1)
end
local body = '[' .. table.concat(events, ',') .. ']'
redis.call('HSET', flight, 'token', ARGV[6], 'created', ARGV[7], 'events', body, 'n', #events)
redis.call('SET', lease, ARGV[4], 'PX', ARGV[5])
return body
""",
    keys=_ROUTE,
    args=("w", "lane", "limit", "node", "lease_ms", "token", "created_ms"),
)

FINISH = Script(
    "webhooks_finish",
    r"""
local w, i = ARGV[1], ARGV[2]
if redis.call('HGET', w .. 'fl:' .. i, 'token') == ARGV[4] then
  redis.call('DEL', w .. 'fl:' .. i)
end
if redis.call('GET', w .. 'lease:' .. i) == ARGV[3] then redis.call('DEL', w .. 'lease:' .. i) end
return 1
""",
    keys=_ROUTE,
    args=("w", "lane", "node", "token"),
)

ABANDON = Script(
    "webhooks_abandon",
    r"""
local lease = ARGV[1] .. 'lease:' .. ARGV[2]
if redis.call('GET', lease) == ARGV[3] then redis.call('DEL', lease) end
return 1
""",
    keys=_ROUTE,
    args=("w", "lane", "node"),
)

# -> {token, created ms, events JSON}, or false
ADOPT = Script(
    "webhooks_adopt",
    r"""
local w, i = ARGV[1], ARGV[2]
local flight = redis.call('HMGET', w .. 'fl:' .. i, 'token', 'created', 'events')
if not flight[1] then return false end
local holder = redis.call('GET', w .. 'lease:' .. i)
if holder and holder ~= ARGV[3] then return false end
redis.call('SET', w .. 'lease:' .. i, ARGV[3], 'PX', ARGV[4])
return flight
""",
    keys=_ROUTE,
    args=("w", "lane", "node", "lease_ms"),
)

# rest: (lane index, token) pairs. -> lane indexes lost to others.
# A lease or batch gone without a successor (Redis lost its data) is written again: sending
# on is at least once, and the lease keeps other nodes off the lane until this batch is done.
RENEW = Script(
    "webhooks_renew",
    r"""
local w, node = ARGV[1], ARGV[2]
local lost = {}
for a = 4, #ARGV, 2 do
  local i, token = ARGV[a], ARGV[a + 1]
  local holder = redis.call('GET', w .. 'lease:' .. i)
  local current = redis.call('HGET', w .. 'fl:' .. i, 'token')
  if (holder and holder ~= node) or (current and current ~= token) then
    lost[#lost + 1] = i
  else
    redis.call('SET', w .. 'lease:' .. i, node, 'PX', ARGV[3])
  end
end
return lost
""",
    keys=_ROUTE,
    args=("w", "node", "lease_ms"),
    rest="lane_tokens",
)


class _Lane(NamedTuple):
    """What the last PASS saw of one lane."""

    queued: int
    oldest: float
    token: str  # of the batch in flight; "" if none
    holder: str  # the node holding the lease; "" if none


class RedisWebhookStore:
    """The webhook store of a cluster: holds, queues and batches in flight live in Redis."""

    durable = True

    def __init__(self, link: RedisLink, apps: tuple[AppConfig, ...]) -> None:
        self.link = link
        self.node = link.node
        self.lease_ms = max(1, int(link.config.node_timeout * 1000))
        self.poll = link.config.heartbeat_interval
        self._lane_counts: dict[str, int] = {}
        self.set_apps(apps)
        self._pending: dict[str, list[Arrival]] = {}  # accepted, not written yet
        self._unsaved = 0
        self._buffering = False  # Redis went away with arrivals waiting here (logged once)
        self._dirty: set[str] = set()  # apps to look at on the next pass
        self._sizes: dict[str, int] = {}
        self._next_due: dict[str, float] = {}
        self._lanes: dict[str, _Lane] = {}
        self._mine: dict[str, Batch] = {}  # batches this process sends
        self._known: dict[str, str] = {}  # lane -> token of the last batch this process sent
        self._unfinished_finishes: list[Batch] = []  # finish() while Redis was unreachable
        self._poll_at = 0.0
        self._renew_at = 0.0

    # --- plumbing -----------------------------------------------------------------------------

    def set_apps(self, apps: tuple[AppConfig, ...]) -> None:
        """Follow the apps that have webhook targets (at start, and after a reload)."""
        self._lane_counts = {app.app_id: len(app.webhooks) for app in apps if app.webhooks}

    def _run(self, script: Script, app_id: str, rest: list[Any] | None = None, **named: Any) -> Any:
        """Run a script on the app's slot (EVALSHA, loading it again after a Redis restart)."""
        w = self._w(app_id)
        return script(self.link.client, rest or (), due=w + "due", w=w, **named)

    def _w(self, app_id: str) -> str:
        return keys.webhooks(self.link.prefix, app_id)

    @staticmethod
    def _split(lane: str) -> tuple[str, str]:
        app_id, _, index = lane.rpartition("/")
        return app_id, index

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, ResponseError):
            # Redis answered (out of memory, say): it is not down, so the probe and the
            # janitor's recovery must not run; what waits is tried again on the next pass.
            log.warning("Redis refused a webhook store command: %s", exc)
        else:
            self.link.mark_down(exc)

    # --- sizes --------------------------------------------------------------------------------

    def size(self) -> int:
        return sum(self._sizes.values()) + self._unsaved

    def unsaved(self) -> int:
        return self._unsaved

    # --- arrivals and releases ----------------------------------------------------------------

    def accept(self, app_id: str, arrivals: list[Arrival]) -> None:
        self._pending.setdefault(app_id, []).extend(arrivals)
        self._unsaved += len(arrivals)
        if not self.link.up:
            self._buffer()

    def _buffer(self) -> None:
        if self._unsaved and not self._buffering:
            self._buffering = True
            log.warning("Redis unreachable: webhook events wait in this process until it is back")

    def release(self, now: float) -> None:
        apps = set(self._pending) | self._dirty
        apps.update(app_id for app_id, due in self._next_due.items() if due <= now)
        if now >= self._poll_at:
            # Look at every app now and then: holds, queues and batches of nodes that died.
            apps.update(self._lane_counts)
            self._poll_at = now + self.poll
        if not self.link.up:
            self._buffer()
            return
        written = self._unsaved
        try:
            while self._unfinished_finishes:
                self._finish(self._unfinished_finishes[0])
                self._unfinished_finishes.pop(0)
            for app_id in sorted(apps):
                if app_id in self._lane_counts:
                    self._pass(app_id, now)
                else:  # cannot happen (only apps with webhooks emit): never spin on it
                    self._unsaved -= len(self._pending.pop(app_id, ()))
                self._dirty.discard(app_id)
            if self._mine and now >= self._renew_at:
                self._renew()
                self._renew_at = now + self.poll
        except REDIS_ERRORS as exc:
            self._failed(exc)
            if not self.link.up:
                self._buffer()
        if self._buffering and not self._unsaved:
            self._buffering = False
            log.info("Redis reachable: %d waiting webhook event(s) written to it", written)

    def _pass(self, app_id: str, now: float) -> None:
        """Write the app's pending arrivals, release its due holds, refresh what we know."""
        pending = self._pending.get(app_id, [])
        nlanes = self._lane_counts[app_id]
        while True:
            chunk = pending[:_CHUNK]
            arrivals: list[Any] = []
            for arrival in chunk:
                arrivals.extend(_encode(arrival, now, self.lease_ms))
            report = self._run(
                PASS,
                app_id,
                arrivals,
                now=repr(now),
                lanes=nlanes,
                release_limit=_RELEASE_LIMIT,
            )
            del pending[: len(chunk)]
            self._unsaved -= len(chunk)
            if not pending:
                break
        self._pending.pop(app_id, None)
        cancelled, released, next_due, size = report[:4]
        if cancelled or released:
            log.debug(
                "webhooks of app %s: %d cancelled by a return, %d released after their grace",
                app_id,
                cancelled,
                released,
            )
        if released >= _RELEASE_LIMIT:
            self._next_due[app_id] = now  # more are due: at once
        elif next_due:
            self._next_due[app_id] = float(next_due)
        else:
            self._next_due.pop(app_id, None)
        self._sizes[app_id] = int(size)
        lanes = report[4:]
        for index in range(nlanes):
            queued, oldest, token, holder = lanes[4 * index : 4 * index + 4]
            self._lanes[lane_name(app_id, index)] = _Lane(
                int(queued),
                float(oldest) if oldest else now,
                token.decode() if token else "",
                holder.decode() if holder else "",
            )

    def next_release(self) -> float | None:
        if not self.link.up:
            return self._poll_at  # and the probe wakes the scheduler when Redis is back
        if self._dirty or self._pending:
            return 0.0
        dues = [*self._next_due.values(), self._poll_at]
        if self._mine:
            dues.append(self._renew_at)
        return min(dues)

    # --- lanes --------------------------------------------------------------------------------

    def waiting(self) -> dict[str, tuple[int, float]]:
        if not self.link.up:
            return {}
        return {
            lane: (state.queued, state.oldest)
            for lane, state in self._lanes.items()
            if state.queued and not state.token and not state.holder
        }

    def take(self, lane: str, limit: int, now: float) -> Batch | None:
        app_id, index = self._split(lane)
        self._dirty.add(app_id)
        if not self.link.up:
            return None
        token = uuid.uuid4().hex
        created_ms = int(now * 1000)
        try:
            body = self._run(
                TAKE,
                app_id,
                lane=index,
                limit=limit,
                node=self.node,
                lease_ms=self.lease_ms,
                token=token,
                created_ms=created_ms,
            )
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return None
        state = self._lanes.get(lane)
        if not body:
            if state is not None:  # another node was first: wait for the next pass
                self._lanes[lane] = state._replace(holder=state.holder or "?")
            return None
        batch = Batch(lane, tuple(json.loads(body)), created_ms, token)
        self._mine[lane] = batch
        self._known[lane] = token
        if state is not None:
            self._lanes[lane] = _Lane(
                max(0, state.queued - len(batch.events)), state.oldest, token, self.node
            )
        return batch

    def finish(self, batch: Batch) -> None:
        if self._mine.get(batch.lane) is batch:
            del self._mine[batch.lane]
        self._dirty.add(self._split(batch.lane)[0])
        if not self.link.up:
            self._unfinished_finishes.append(batch)
            return
        try:
            self._finish(batch)
        except REDIS_ERRORS as exc:
            self._failed(exc)
            self._unfinished_finishes.append(batch)

    def _finish(self, batch: Batch) -> None:
        app_id, index = self._split(batch.lane)
        self._run(FINISH, app_id, lane=index, node=self.node, token=batch.token)

    def abandon(self, batch: Batch) -> None:
        if self._mine.get(batch.lane) is batch:
            del self._mine[batch.lane]
        if not self.link.up:
            return  # the lease expires by itself
        app_id, index = self._split(batch.lane)
        try:
            self._run(ABANDON, app_id, lane=index, node=self.node)
        except REDIS_ERRORS as exc:
            self._failed(exc)

    def owns(self, batch: Batch) -> bool:
        return self._mine.get(batch.lane) is batch

    def unfinished(self) -> list[Batch]:
        if not self.link.up:
            return []
        adopted = []
        for lane, state in list(self._lanes.items()):
            if not state.token or lane in self._mine or self._known.get(lane) == state.token:
                continue  # none, or this process sends it or has just finished it
            if state.holder and state.holder != self.node:
                continue  # its node is alive (or its lease has not expired yet)
            app_id, index = self._split(lane)
            self._dirty.add(app_id)
            try:
                flight = self._run(
                    ADOPT, app_id, lane=index, node=self.node, lease_ms=self.lease_ms
                )
            except REDIS_ERRORS as exc:
                self._failed(exc)
                return adopted
            if not flight:
                self._lanes[lane] = state._replace(holder=state.holder or "?")
                continue
            token, created, events = flight
            batch = Batch(lane, tuple(json.loads(events)), int(created), token.decode())
            log.info(
                "resuming a webhook batch of lane %s left by %s (%d event(s))",
                lane,
                state.holder or "a node that is gone",
                len(batch.events),
            )
            self._mine[lane] = batch
            self._known[lane] = batch.token
            self._lanes[lane] = state._replace(holder=self.node)
            adopted.append(batch)
        return adopted

    def _renew(self) -> None:
        """Extend the leases of the batches this process sends; forget those taken over."""
        by_app: dict[str, list[str]] = {}
        for lane, batch in self._mine.items():
            app_id, index = self._split(lane)
            by_app.setdefault(app_id, []).extend((index, batch.token))
        for app_id, pairs in by_app.items():
            lost = self._run(RENEW, app_id, pairs, node=self.node, lease_ms=self.lease_ms)
            for index in lost:
                lane = lane_name(app_id, int(index))
                self._mine.pop(lane, None)
                log.warning("webhook batch of lane %s was taken over by another node", lane)

    def close(self) -> None:
        for batch in list(self._mine.values()):
            self.abandon(batch)


def _encode(arrival: Arrival, now: float, lease_ms: int) -> list[str]:
    """The 7 PASS arguments of one arrival."""
    if arrival.key is None:
        kind, key, number = "e", "", "0"
    elif arrival.held:
        kind, key, number = "h", arrival.key, repr(arrival.until)
    else:
        # How long a held event emitted before this return may still arrive and be dropped:
        # the rest of the grace period, plus as long as this arrival waited to be written,
        # plus a lease (another node may wait as long to write its own).
        ttl = (arrival.until - arrival.at) + max(0.0, now - arrival.at)
        kind, key, number = "r", arrival.key, str(int(ttl * 1000) + lease_ms)
    lanes = ",".join(RedisWebhookStore._split(lane)[1] for lane in arrival.lanes)
    return [
        kind,
        key,
        number,
        lanes,
        arrival.dedupe or "",
        repr(arrival.at),
        protocol.dumps(arrival.event),  # JSON escapes newlines: the record's separator
    ]
