"""`hearth drift`: the drift watch of a running daemon (docs/drift.md).

    hearth drift status [--addr A] [--model M]   JSON: reference size, window,
                                                 statistics, p-values, alarm
    hearth drift reset --model M                 accept the current traffic as
                                                 the new reference (admin; audited)
    hearth drift simulate --sites N [--shift F] [--null] ...
                                                 the watch on real daemons on
                                                 loopback (runtime/drift/simulate.py);
                                                 the last stdout line is JSON
"""
from __future__ import annotations

import argparse
import json
import math
from typing import Any

from runtime._proto.hearth.v1 import models_pb2 as mpb
from runtime.cli.client import add_common, connect
from runtime.errors import InvalidArgument
from runtime.exit_codes import ExitCode


def summary_json(d: mpb.DriftSummary, model: str) -> dict[str, Any]:
    """One monitor, as runtime/drift/service.py's summary() writes it."""
    return {
        "model": model, "version": d.version, "phase": d.phase,
        "reference_size": d.reference_size, "window": d.window, "observed": d.observed,
        "threshold": None if math.isnan(d.threshold) else d.threshold, "alarm": d.alarm,
        "signals": {s.signal: {"statistic": s.statistic, "p_value": s.p_value}
                    for s in d.signals},
    }


def cmd_status(args: argparse.Namespace) -> int:
    with connect(args) as c:
        names = [args.model] if args.model else [m.name for m in c.list_models().models]
        monitors = [summary_json(d, name) for name in names
                    for d in c.get_model(name).drift]
    print(json.dumps({"monitors": monitors}, indent=2, sort_keys=True))
    return ExitCode.OK


def cmd_reset(args: argparse.Namespace) -> int:
    if not args.model:
        raise InvalidArgument("hearth drift reset: --model is required")
    with connect(args) as c:
        status = c.models.ResetDrift(mpb.ResetDriftRequest(model=args.model),
                                     timeout=c.timeout)
    print(json.dumps({"monitors": [summary_json(d, status.name) for d in status.drift]},
                     indent=2, sort_keys=True))
    return ExitCode.OK


def cmd_simulate(args: argparse.Namespace) -> int:
    from runtime.cli.drift_simulate import options_of, run

    print(json.dumps(run(options_of(args)), sort_keys=True))
    return ExitCode.OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    drift = sub.add_parser("drift", help="the drift watch of a running daemon")
    dsub = drift.add_subparsers(dest="drift_command", required=True)
    p = dsub.add_parser("status", help="each drift monitor's state as JSON")
    add_common(p)
    p.set_defaults(func=cmd_status)
    p = dsub.add_parser("reset", help="accept the model's current traffic as its new "
                                      "drift reference (admin)")
    add_common(p)
    p.set_defaults(func=cmd_reset)
    p = dsub.add_parser("simulate", help="sites' daemons on loopback, their traffic shifted "
                                         "to a new domain; prints the detection delays, "
                                         "false alarms and new-domain perplexity as JSON")
    from runtime.cli.drift_simulate import add_arguments
    add_arguments(p)
    p.set_defaults(func=cmd_simulate)
