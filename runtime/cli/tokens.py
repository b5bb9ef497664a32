"""`hearth tokens create|list|revoke`: bearer tokens, kept in the state directory."""
from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from runtime.auth.tokens import TokenStore
from runtime.cli.state import opened_store
from runtime.cli.storage import command
from runtime.exit_codes import ExitCode


def cmd_create(args: argparse.Namespace) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    with opened_store(args) as store:
        token = TokenStore(store).create(args.name, models, admin=args.admin)
    print(token)
    print(f"token {args.name!r} may use {', '.join(models)}"
          f"{' and load/unload models' if args.admin else ''}; it is shown only now, "
          "only its keyed hash is kept", file=sys.stderr)
    return ExitCode.OK


def cmd_list(args: argparse.Namespace) -> int:
    with opened_store(args) as store:
        listed = TokenStore(store).list()
    for t in listed:
        created = datetime.fromtimestamp(t.created_at, UTC).strftime("%Y-%m-%d %H:%M")
        state = "revoked" if t.revoked_at else "live"
        print(f"{t.name:20} {state:8} models {','.join(t.models):30} "
              f"{'admin ' if t.admin else ''}created {created}  id {t.id}")
    return ExitCode.OK


def cmd_revoke(args: argparse.Namespace) -> int:
    with opened_store(args) as store:
        done = TokenStore(store).revoke(args.name)
    print(f"revoked {args.name!r}" if done else f"no live token named {args.name!r}")
    return ExitCode.OK if done else ExitCode.REQUEST_FAILED


def add_parsers(sub: argparse._SubParsersAction) -> None:
    tokens = sub.add_parser("tokens", help="bearer tokens: create, list, revoke")
    tsub = tokens.add_subparsers(dest="tokens_command", required=True)
    p = command(tsub, "create", "create a token (printed once)", cmd_create)
    p.add_argument("name")
    p.add_argument("--models", required=True, help="comma list of models, or * for all")
    p.add_argument("--admin", action="store_true", help="may also load and unload models")
    command(tsub, "list", "every token, live and revoked", cmd_list)
    p = command(tsub, "revoke", "revoke a token (takes effect within a second)", cmd_revoke)
    p.add_argument("name")
