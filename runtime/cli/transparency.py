"""`hearth eval bias`: measure the served model's gender-occupation bias."""
from __future__ import annotations

import argparse
from pathlib import Path

from runtime.cli.client import add_common, connect
from runtime.exit_codes import ExitCode


def cmd_eval_bias(args: argparse.Namespace) -> int:
    from runtime.transparency.bias import evaluate, write
    from runtime.transparency.scoring import target_logprob

    with connect(args) as client:
        model = args.model or client.get_model("").name
        report = evaluate(lambda prompt, target: target_logprob(
            client, prompt, target, model, args.adapter), model, args.adapter)
    doc, chart = write(report, Path(args.out))
    gap, overall = report.association_gap, report.overall_preference
    print(f"association gap   {gap.estimate:+.3f} nats  95% CI [{gap.low:+.3f}, {gap.high:+.3f}]"
          f"{'  (bias detected)' if gap.excludes_zero else ''}")
    print(f"overall 'he' preference {overall.estimate:+.3f} nats  "
          f"95% CI [{overall.low:+.3f}, {overall.high:+.3f}]")
    print(f"wrote {doc} and {chart}")
    return ExitCode.OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="evaluations of the served model (offline, on the model)")
    esub = ev.add_subparsers(dest="eval_command", required=True)
    p = esub.add_parser("bias", help="gender-occupation association, with 95%% intervals")
    add_common(p)
    p.add_argument("--adapter", default="", help="evaluate with this LoRA adapter")
    p.add_argument("--out", default="bias-report", help="folder for bias.json and bias.svg")
    p.set_defaults(func=cmd_eval_bias)
