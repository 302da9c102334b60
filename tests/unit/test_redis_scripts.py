"""Each Lua script's declared KEYS/ARGV contract matches the positions its source reads."""

from __future__ import annotations

import re

import pytest

import ipe.redis.http_routing
import ipe.redis.presence
import ipe.redis.webhook_store  # noqa: F401 (declares its scripts)
from ipe.redis.scripts import Script

SCRIPTS = list(Script.declared)


def used(source: str, table: str) -> set[int]:
    return {int(n) for n in re.findall(rf"\b{table}\[(\d+)\]", source)}


def test_every_script_is_declared():
    names = {script.name for script in SCRIPTS}
    assert {"count_up", "count_down", "join", "leave", "restore", "reap"} <= names
    assert {"webhooks_pass", "webhooks_take", "webhooks_finish", "webhooks_renew"} <= names
    assert "http_release" in names
    assert len(names) == len(SCRIPTS), "two scripts share a name"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.name)
def test_argv_read_by_the_source_is_exactly_the_named_args(script):
    assert used(script.source, "ARGV") == set(range(1, len(script.args) + 1))
    assert len(set(script.args)) == len(script.args)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.name)
def test_keys_read_by_the_source_are_declared(script):
    # A declared key the source never reads routes the call to the app's cluster slot.
    assert used(script.source, "KEYS") <= set(range(1, len(script.keys) + 1))
    assert script.keys, "every script names a key, so that a cluster routes it"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.name)
def test_a_script_with_rest_loops_from_just_after_its_named_args(script):
    loops = [int(n) for n in re.findall(r"for \w+ = (\d+), #ARGV", script.source)]
    if script.rest is None:
        assert loops == []
    else:
        assert loops == [len(script.args) + 1]


def test_named_arguments_go_to_their_positions():
    script = Script("example", "return ARGV[2]", keys=("k",), args=("a", "b"), rest="more")
    Script.declared.remove(script)
    keys, args = script.positions([5, 6], b=2, a=1, k="key")
    assert (keys, args) == (["key"], [1, 2, 5, 6])


def test_a_missing_or_unknown_argument_is_refused():
    script = Script("example", "return ARGV[1]", keys=("k",), args=("a",))
    Script.declared.remove(script)
    with pytest.raises(TypeError, match="missing argument 'a'"):
        script.positions(k="key")
    with pytest.raises(TypeError, match="unknown"):
        script.positions(k="key", a=1, b=2)
    with pytest.raises(TypeError, match="no further"):
        script.positions([1], k="key", a=1)
