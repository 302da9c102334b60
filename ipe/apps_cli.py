"""`ipe apps ...`: list and change the apps of `app_manager: driver: redis` on a running cluster.

Every node listens for changes and serves them within a second; nothing restarts.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from typing import Any

import yaml

from ipe import config as config_module

# What `show` and `list` print of a secret: enough to tell two apart, never enough to use.
SHOWN_SECRET_CHARS = 4


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipe apps", description="Manage the apps stored in Redis (app_manager driver redis)."
    )
    parser.add_argument("--config", "-config", default=None, help="config file (as for ipe)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every app: id, key, enabled, name")
    show = sub.add_parser("show", help="one app as JSON (secrets shortened)")
    show.add_argument("app_id")
    add = sub.add_parser("add", help="store a new app")
    add.add_argument("--id", required=True, dest="app_id")
    add.add_argument("--key", required=True)
    add.add_argument("--secret", help="default: a new random secret, printed")
    add.add_argument("--name", default="")
    add.add_argument("--disabled", action="store_true")
    add.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    update = sub.add_parser("update", help="change settings of an app")
    update.add_argument("app_id")
    update.add_argument("--key")
    update.add_argument("--name")
    update.add_argument(
        "--set", action="append", default=[], metavar="PATH=VALUE",
        help="e.g. limits.max_connections=100, user_events=false, webhooks=[{url: ...}]",
    )
    for name in ("disable", "enable", "remove"):
        sub.add_parser(name, help=f"{name} an app").add_argument("app_id")
    rotate = sub.add_parser("rotate-secret", help="add a new first secret, keep the old ones")
    rotate.add_argument("app_id")
    rotate.add_argument("--drop-old", action="store_true", help="keep only the current secret")
    rotate.add_argument("--secret", help="the new secret (default: random, printed)")
    return parser


def _set(document: dict[str, Any], assignment: str) -> None:
    path, sep, text = assignment.partition("=")
    if not sep or not path:
        raise config_module.ConfigError(f"--set {assignment!r}: expected PATH=VALUE")
    *parents, last = path.split(".")
    node = document
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise config_module.ConfigError(f"--set {path}: {part} is not a mapping")
    node[last] = yaml.safe_load(text) if text else ""


def _secrets_of(document: dict[str, Any]) -> list[str]:
    if "secrets" in document:
        return list(document["secrets"])
    return [document["secret"]] if document.get("secret") else []


def _shown(document: dict[str, Any]) -> dict[str, Any]:
    shown = {k: v for k, v in document.items() if k not in ("secret", "secrets")}
    # A short secret shows nothing of itself: its last four characters would be most of it.
    shown["secrets"] = [
        f"…{s[-SHOWN_SECRET_CHARS:]}" if len(s) >= 4 * SHOWN_SECRET_CHARS else "…"
        for s in _secrets_of(document)
    ]
    return shown


def _store(args: argparse.Namespace) -> Any:
    import os

    if args.config:
        os.environ["IPE_CONFIG"] = args.config
    from ipe.app import config_path

    cfg = config_module.load(config_path())
    if cfg.app_manager.driver != "redis" or cfg.redis is None:
        raise config_module.ConfigError(
            "app_manager.driver: `ipe apps` manages apps stored in Redis (driver: redis); "
            f"this config uses {cfg.app_manager.driver}"
        )
    from ipe.redis.apps import RedisApps
    from ipe.redis.link import RedisLink

    return RedisApps(RedisLink(cfg.redis, "ipe-apps-cli"), cfg.limits)


def run(argv: list[str]) -> int:
    """Carry out one `ipe apps` command; the exit status."""
    args = _parser().parse_args(argv)
    try:
        store = _store(args)
        return _command(store, args)
    except config_module.ConfigError as exc:
        print(f"ipe apps: {exc}", file=sys.stderr)
        return 2
    except LookupError as exc:
        print(f"ipe apps: {exc.args[0]}", file=sys.stderr)
        return 1


def _command(store: Any, args: argparse.Namespace) -> int:
    from ipe.redis.link import REDIS_ERRORS

    try:
        documents = store.documents()
    except Exception as exc:  # AppSourceError: Redis unreachable
        print(f"ipe apps: cannot read the apps from Redis: {exc}", file=sys.stderr)
        return 1
    command = args.command
    if command == "list":
        for app_id, doc in sorted(documents.items()):
            state = "enabled" if doc.get("enabled", True) else "disabled"
            print(f"{app_id}\t{doc.get('key')}\t{state}\t{doc.get('name', '')}")
        return 0
    if command == "add":
        if args.app_id in documents:
            raise config_module.ConfigError(f"app {args.app_id} exists already; use update")
        new_secret = args.secret or secrets.token_hex(20)
        document: dict[str, Any] = {
            "app_id": args.app_id,
            "key": args.key,
            "secrets": [new_secret],
            "name": args.name,
            "enabled": not args.disabled,
        }
        for assignment in args.set:
            _set(document, assignment)
        _put(store, document, REDIS_ERRORS)
        print(f"added app {args.app_id} (key {args.key})")
        if not args.secret:
            print(f"secret: {new_secret}")
        return 0
    document = documents.get(args.app_id)
    if document is None:
        raise LookupError(f"no app {args.app_id}")
    if command == "show":
        print(json.dumps(_shown(document), indent=2, sort_keys=True, ensure_ascii=False))
        return 0
    if command == "remove":
        store.remove(args.app_id)
        print(f"removed app {args.app_id}")
        return 0
    if command in ("disable", "enable"):
        document["enabled"] = command == "enable"
    elif command == "update":
        if args.key is not None:
            document["key"] = args.key
        if args.name is not None:
            document["name"] = args.name
        for assignment in args.set:
            _set(document, assignment)
    elif command == "rotate-secret":
        current = _secrets_of(document)
        if args.drop_old:
            kept = current[:1]
            print(f"dropped {len(current) - 1} old secret(s) of app {args.app_id}")
        else:
            new_secret = args.secret or secrets.token_hex(20)
            kept = [new_secret, *current]
            print(f"app {args.app_id}: new secret first, {len(current)} old one(s) still valid")
            if not args.secret:
                print(f"secret: {new_secret}")
        document.pop("secret", None)
        document["secrets"] = kept
    _put(store, document, REDIS_ERRORS)
    if command != "rotate-secret":
        print(f"{command}d app {args.app_id}" if command != "update" else "updated")
    return 0


def _put(store: Any, document: dict[str, Any], errors: Any) -> None:
    try:
        store.put(document)
    except errors as exc:
        raise LookupError(f"cannot write to Redis: {exc}") from None
