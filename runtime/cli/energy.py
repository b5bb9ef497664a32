"""`hearth energy report [--since T] [--json]`: energy and gCO2e per model
and per adapter, from the audit log's request records (docs/energy.md).
Needs the master key (the records are sealed), like `hearth audit export`."""
from __future__ import annotations

import argparse
import json
import sys

from runtime.cli.state import add_state_options, opened_store
from runtime.cli.storage import parse_since
from runtime.energy.report import build_report, format_report
from runtime.exit_codes import ExitCode
from runtime.storage.audit import AuditLog


def cmd_report(args: argparse.Namespace) -> int:
    with opened_store(args) as store:
        audit = AuditLog(store)
        broken = audit.verify()
        if broken is not None:
            print(f"warning: the audit log is broken at {broken}; reporting what decrypts",
                  file=sys.stderr)
        report = build_report(audit.entries(since=parse_since(args.since)))
    if args.json:
        print(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        print(format_report(report))
    return ExitCode.OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    energy = sub.add_parser("energy", help="energy and carbon per model and adapter")
    esub = energy.add_subparsers(dest="energy_command", required=True)
    p = esub.add_parser("report", help="totals from the audit log's request records")
    add_state_options(p)
    p.add_argument("--since", help="ISO date/time (UTC if no zone) or Unix time")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(func=cmd_report)
