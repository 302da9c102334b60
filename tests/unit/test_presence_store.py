"""The in-process presence store keeps max_presence_members in the join itself."""

from __future__ import annotations

import json

from ipe.presence import InMemoryPresence


def test_a_full_roster_refuses_newcomers_but_not_returning_users():
    presence = InMemoryPresence()
    assert presence.join("1", "presence-room", "1", None, 2) is not None
    assert presence.join("1", "presence-room", "2", {"n": 2}, 2) is not None
    assert presence.join("1", "presence-room", "3", None, 2) is None  # full: nothing changed
    assert set(presence.members("1", "presence-room")) == {"1", "2"}
    # A second socket of a member joins (and does not count twice).
    joined = presence.join("1", "presence-room", "2", {"n": 3}, 2)
    assert joined is not None and not joined.first
    assert json.loads(joined.roster)["presence"]["hash"] == {"1": None, "2": {"n": 3}}
    assert joined.count == 3  # the join counted its subscription
    # Once one leaves, a newcomer fits.
    presence.leave("1", "presence-room", "1")
    assert presence.join("1", "presence-room", "3", None, 2) is not None


def test_the_limit_is_per_channel():
    presence = InMemoryPresence()
    assert presence.join("1", "presence-a", "1", None, 1) is not None
    assert presence.join("1", "presence-b", "1", None, 1) is not None
    assert presence.join("1", "presence-a", "2", None, 1) is None
