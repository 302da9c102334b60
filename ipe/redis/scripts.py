"""Lua scripts with their contracts: the names of their KEYS and ARGV, in the order Lua reads.

A `Script` is declared beside the code that interprets its answer (`ipe.redis.presence`,
`ipe.redis.webhook_store`). Callers pass every argument by name and `Script` puts it in its
position, so a script and its callers cannot disagree about what ARGV[5] is;
tests/unit/test_redis_scripts.py checks each declared contract against the positions its
source reads. A KEYS entry may be there only to route the call to the app's Redis Cluster
slot (every key of an app shares its hash tag, see `ipe.redis.keys`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class Script:
    """One Lua script: its source, and the names of its KEYS and ARGV, in order.

    `rest` names what follows the named ARGV (a script that loops over `#ARGV`), e.g. the
    7 values of each arrival; the caller passes those as the `rest` sequence.
    """

    __slots__ = ("name", "source", "keys", "args", "rest", "_bound")

    # Every script ever declared, for the contract test.
    declared: list[Script] = []

    def __init__(
        self,
        name: str,
        source: str,
        keys: tuple[str, ...],
        args: tuple[str, ...],
        rest: str | None = None,
    ) -> None:
        self.name = name
        self.source = source
        self.keys = keys
        self.args = args
        self.rest = rest
        self._bound: tuple[Any, Any] | None = None
        Script.declared.append(self)

    def __repr__(self) -> str:
        return f"<Script {self.name}>"

    def positions(self, rest: Iterable[Any] = (), **named: Any) -> tuple[list[Any], list[Any]]:
        """(KEYS, ARGV) for named arguments; a missing or unknown name is a TypeError."""
        unknown = named.keys() - set(self.keys) - set(self.args)
        if unknown:
            raise TypeError(f"{self.name}: unknown argument(s) {sorted(unknown)}")
        try:
            keys = [named[name] for name in self.keys]
            args = [named[name] for name in self.args]
        except KeyError as exc:
            raise TypeError(f"{self.name}: missing argument {exc.args[0]!r}") from None
        if self.rest is None:
            if rest:
                raise TypeError(f"{self.name}: takes no further arguments")
        else:
            args.extend(rest)
        return keys, args

    def __call__(self, client: Any, rest: Iterable[Any] = (), **named: Any) -> Any:
        """Run on `client` (EVALSHA; redis-py loads the script again after a Redis restart)."""
        keys, args = self.positions(rest, **named)
        bound = self._bound
        if bound is None or bound[0] is not client:
            bound = self._bound = (client, client.register_script(self.source))
        return bound[1](keys=keys, args=args)

    def queue(self, pipe: Any, rest: Iterable[Any] = (), **named: Any) -> None:
        """Add a call to a pipeline (EVAL, not EVALSHA: a script missing half-way through a
        pipeline could not be loaded without breaking its order; Redis caches it by body)."""
        keys, args = self.positions(rest, **named)
        # (A Redis Cluster pipeline has no `eval` method, but routes the command by its keys.)
        pipe.execute_command("EVAL", self.source, len(keys), *keys, *args)
