"""`hearth doctor`: check this installation, one line per check with a fix."""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from runtime.cli.state import add_state_options, keyed, source_of
from runtime.config import Config, load_config
from runtime.doctor import DoctorInput, Finding, Status, find_unit, run_checks
from runtime.errors import ConfigError
from runtime.exit_codes import ExitCode
from runtime.storage.paths import state_dir


def cmd_doctor(args: argparse.Namespace) -> int:
    findings: list[Finding] = []
    config = Config()
    if args.config:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            findings.append(Finding("config", Status.FAIL, str(exc), "fix the file"))
            if not args.json:
                print(findings[-1].line(), flush=True)
    inp = DoctorInput(config=config, models=[m for m in config.models.values() if m.load],
                      state_dir=state_dir(args.state_dir),
                      key=(lambda: source_of(args)) if keyed(args) else None,
                      unit=find_unit(args.unit))
    for finding in run_checks(inp):
        findings.append(finding)
        if not args.json:
            print(finding.line(), flush=True)
    if args.json:
        print(json.dumps([{**asdict(f), "status": f.status.value} for f in findings], indent=2))
    failed = [f for f in findings if f.status is Status.FAIL]
    return ExitCode.CHECKS_FAILED if failed else ExitCode.OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("doctor", help="check the installation: GPU, driver, memory, store, "
                                      "key, unit hardening")
    d.add_argument("--config", help="hearth.toml (default: none; /etc/hearth/hearth.toml for "
                                    "the service)")
    d.add_argument("--unit", help="the unit file to rate (default: the installed hearth.service)")
    d.add_argument("--json", action="store_true", help="findings as JSON")
    add_state_options(d)
    d.set_defaults(func=cmd_doctor)
