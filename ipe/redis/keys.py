"""Every Redis key and Pub/Sub channel name ipe uses, built in one place.

Every key of one app starts with the app's hash tag `{prefix:app_id}` (`app_tag`), so that
all of an app's state sits on one Redis Cluster slot and each transition is one atomic Lua
script. Lua scripts receive the tag (or the webhook prefix) and append the suffixes listed
here themselves; a change of layout touches this module and those scripts' sources.

  {P:A}:subs  :sockets:<ch>  :members:<ch>  :online  :ver  :nodes  :reaped:<N>
  {P:A}:node:<N>:subs  :members  :online  :reg             (ipe.redis.presence)
  {P:A}:conns  :rate:<limit>:<second>                      (ipe.redis.quotas)
  {P:A}:cache:<ch>                                         (ipe.redis.cache)
  {P:A}:wh:held  :due  :ret:<key>  :q:<i>  :dd:<i>  :fl:<i>  :lease:<i>
                                                           (ipe.redis.webhook_store)
  P:node:<N>          a node's heartbeat, not per app       (ipe.redis.janitor)
  P:app:<A>           the app's control Pub/Sub channel     (ipe.redis.broker)
  P:<c|u|w>:<A>:<name>  Pub/Sub of a channel, a user, a watched user (ipe.redis.broker)
  {P:apps}  :keys     apps of `app_manager: redis`: id -> JSON, key -> id  (ipe.redis.apps)
  P:apps:changed      Pub/Sub: the apps changed, read them again  (ipe.redis.apps)
  P:http:<sid>        String: the node holding an HTTP session, with a TTL
  P:http:node:<N>     Pub/Sub: HTTP session requests for node N  (ipe.redis.http_routing)
  {P:A}:console:webhooks:<lane>   a target's last deliveries  (ipe.console.relay)
  P:console           the debug console's Pub/Sub channel   (ipe.console.relay)
"""

from __future__ import annotations


def app_tag(prefix: str, app_id: str) -> str:
    """`{prefix:app_id}`: the hash tag that opens every key of one app."""
    return f"{{{prefix}:{app_id}}}"


def node_share(tag: str, node: str, kind: str) -> str:
    """Hash: node `node`'s share of the cluster-wide `kind` ("subs", "members", "online")."""
    return f"{tag}:node:{node}:{kind}"


def tally(tag: str, kind: str) -> str:
    """Hash: the cluster-wide counts `kind`: "subs" (channel -> subscriptions on every node)
    or "online" (user_id -> signed-in sockets on every node)."""
    return f"{tag}:{kind}"


def subs(tag: str) -> str:
    """Hash: channel -> subscriptions on every node."""
    return tally(tag, "subs")


def sockets(tag: str, channel: str) -> str:
    """Hash: user_id -> member sockets of a presence channel on every node."""
    return f"{tag}:sockets:{channel}"


def members(tag: str, channel: str) -> str:
    """Hash: user_id -> user_info (JSON) of a presence channel."""
    return f"{tag}:members:{channel}"


def online(tag: str) -> str:
    """Hash: user_id -> signed-in sockets on every node."""
    return tally(tag, "online")


def nodes(tag: str) -> str:
    """Set: the nodes holding a share of the app (where janitors look)."""
    return f"{tag}:nodes"


def member_field(channel: str, user_id: str) -> str:
    """The field of one member in a node's `members` share."""
    return f"{channel}\n{user_id}"


def connections(tag: str) -> str:
    """Hash: node -> that node's open connections of the app (its max_connections quota)."""
    return f"{tag}:conns"


def rate(tag: str, limit: str) -> str:
    """The prefix of an app's per-second windows of one rate limit (the script appends
    `:<second>`; each window expires after two seconds)."""
    return f"{tag}:rate:{limit}"


def cache(prefix: str, app_id: str, channel: str) -> str:
    """String: the last event of a cache channel (JSON [event, data]), with its TTL."""
    return f"{app_tag(prefix, app_id)}:cache:{channel}"


def webhooks(prefix: str, app_id: str) -> str:
    """The prefix of an app's webhook store keys (`...:wh:`; scripts append the rest)."""
    return f"{app_tag(prefix, app_id)}:wh:"


def heartbeat(prefix: str, node: str) -> str:
    """String: a node's heartbeat, expiring after `node_timeout`."""
    return f"{prefix}:node:{node}"


def console_channel(prefix: str) -> str:
    """The debug console's Pub/Sub channel: leases, node numbers, watched apps' records."""
    return f"{prefix}:console"


def console_deliveries(prefix: str, app_id: str, lane: str) -> str:
    """List: the last webhook deliveries (JSON) of one target, newest first."""
    return f"{app_tag(prefix, app_id)}:console:webhooks:{lane}"


def pubsub_channel(prefix: str, app_id: str) -> str:
    """The Pub/Sub channel of one app's control messages: every node subscribes to it."""
    return f"{prefix}:app:{app_id}"


def pubsub_topic(prefix: str, app_id: str, kind: str, name: str) -> str:
    """The Pub/Sub channel of one interest (ipe.hub: a channel, a user, a watched user); only
    nodes with a local socket interested subscribe. No hash tag: on a Redis Cluster these
    spread over every shard (sharded Pub/Sub)."""
    return f"{prefix}:{kind}:{app_id}:{name}"


def apps(prefix: str) -> str:
    """Hash: app id -> the app as JSON (`app_manager: redis`)."""
    return f"{{{prefix}:apps}}"


def app_keys(prefix: str) -> str:
    """Hash: app key -> app id; same slot as `apps`, so both change in one transaction."""
    return f"{{{prefix}:apps}}:keys"


def apps_changed(prefix: str) -> str:
    """The Pub/Sub channel on which a change of the stored apps is announced."""
    return f"{prefix}:apps:changed"


def http_owner(prefix: str, sid: str) -> str:
    """String: the node holding pusher-js HTTP session `sid` ("key/server/session"), with a
    TTL its owner refreshes while the session lives."""
    return f"{prefix}:http:{sid}"


def http_node(prefix: str, node: str) -> str:
    """The Pub/Sub channel on which node `node` hears about the HTTP sessions it holds or
    relays (forwarded sends, attach/detach, relayed lines)."""
    return f"{prefix}:http:node:{node}"
