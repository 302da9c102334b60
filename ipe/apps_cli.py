"""`ipe apps ...`: list and change the apps of `app_manager: driver: redis` on a running cluster.

Every node listens for changes and serves them within a second; nothing restarts.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ipe import app_documents
from ipe import config as config_module


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
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="e.g. limits.max_connections=100, user_events=false, webhooks=[{url: ...}]",
    )
    for name in ("disable", "enable", "remove"):
        sub.add_parser(name, help=f"{name} an app").add_argument("app_id")
    rotate = sub.add_parser("rotate-secret", help="add a new first secret, keep the old ones")
    rotate.add_argument("app_id")
    rotate.add_argument("--drop-old", action="store_true", help="keep only the current secret")
    rotate.add_argument("--secret", help="the new secret (default: random, printed)")
    return parser


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
    from ipe.apps import AppSourceError

    args = _parser().parse_args(argv)
    try:
        store = _store(args)
        return _command(store, args)
    except config_module.ConfigError as exc:
        print(f"ipe apps: {exc}", file=sys.stderr)
        return 2
    except (LookupError, AppSourceError) as exc:  # NoSuchApp; Redis unreachable
        print(f"ipe apps: {exc.args[0]}", file=sys.stderr)
        return 1


def _command(store: Any, args: argparse.Namespace) -> int:
    command = args.command
    if command == "list":
        for app_id, doc in sorted(store.documents().items()):
            state = "enabled" if doc.get("enabled", True) else "disabled"
            print(f"{app_id}\t{doc.get('key')}\t{state}\t{doc.get('name', '')}")
    elif command == "show":
        shown = app_documents.shown(store.document(args.app_id))
        print(json.dumps(shown, indent=2, sort_keys=True, ensure_ascii=False))
    elif command == "add":
        secret = args.secret or app_documents.new_secret()
        document = app_documents.new_app(
            args.app_id, args.key, secret, args.name, enabled=not args.disabled
        )
        for assignment in args.set:
            app_documents.assign(document, assignment)
        store.add(document)
        print(f"added app {args.app_id} (key {args.key})")
        if not args.secret:
            print(f"secret: {secret}")
    elif command == "update":

        def edit(document: dict[str, Any]) -> None:
            if args.key is not None:
                document["key"] = args.key
            if args.name is not None:
                document["name"] = args.name
            for assignment in args.set:
                app_documents.assign(document, assignment)

        store.update(args.app_id, edit)
        print("updated")
    elif command in ("disable", "enable"):
        store.set_enabled(args.app_id, command == "enable")
        print(f"{command}d app {args.app_id}")
    elif command == "remove":
        if not store.remove(args.app_id):
            raise app_documents.NoSuchApp(args.app_id)
        print(f"removed app {args.app_id}")
    elif command == "rotate-secret":
        if args.drop_old:
            _, dropped = store.drop_old_secrets(args.app_id)
            print(f"dropped {dropped} old secret(s) of app {args.app_id}")
        else:
            app, secret = store.rotate_secret(args.app_id, args.secret)
            old = len(app.previous_secrets)
            print(f"app {args.app_id}: new secret first, {old} old one(s) still valid")
            if not args.secret:
                print(f"secret: {secret}")
    return 0
