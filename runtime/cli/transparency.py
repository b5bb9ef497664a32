"""`hearth eval bias`: measure the served model's gender-occupation bias.
`hearth report`: the signed transparency report; `hearth report verify`."""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.cli.client import add_common, connect
from runtime.cli.state import add_state_options, keyed, opened_store, source_of
from runtime.errors import ConfigError, NotFound
from runtime.exit_codes import ExitCode
from runtime.storage.paths import state_dir
from runtime.storage.store import SealedStore

if TYPE_CHECKING:
    from runtime.config import Config
    from runtime.transparency.report import CheckResult, ReleaseInfo, SiteInfo


def cmd_eval_bias(args: argparse.Namespace) -> int:
    from runtime.transparency.bias import evaluate, write
    from runtime.transparency.scoring import target_logprob

    with connect(args) as client:
        model = args.model or client.get_model("").name
        report = evaluate(lambda prompt, target: target_logprob(
            client, prompt, target, model, args.adapter), model, args.adapter,
            parallel=args.parallel)
    doc, chart = write(report, Path(args.out))
    gap, overall = report.association_gap, report.overall_preference
    print(f"association gap   {gap.estimate:+.3f} nats  95% CI [{gap.low:+.3f}, {gap.high:+.3f}]"
          f"{'  (bias detected)' if gap.excludes_zero else ''}")
    print(f"overall 'he' preference {overall.estimate:+.3f} nats  "
          f"95% CI [{overall.low:+.3f}, {overall.high:+.3f}]")
    print(f"wrote {doc} and {chart}")
    if keyed(args):
        from runtime.storage.store import Kind
        from runtime.transparency.report import BIAS_OBJECT

        with opened_store(args) as store:
            store.put_bytes(Kind.EVALUATION, BIAS_OBJECT, doc.read_bytes())
        print("sealed into the store for `hearth report`")
    return ExitCode.OK


# ---- the report -------------------------------------------------------------------------

def _doctor(args: argparse.Namespace, config: Config) -> list[CheckResult]:
    from runtime.doctor import DoctorInput, find_unit, run_checks
    from runtime.transparency.report import CheckResult
    inp = DoctorInput(config=config, models=[m for m in config.models.values() if m.load],
                      state_dir=state_dir(args.state_dir),
                      key=(lambda: source_of(args)) if keyed(args) else None,
                      unit=find_unit(args.unit))
    return [CheckResult(f.check, f.status.value, f.detail) for f in run_checks(inp)]


def _federation(store: SealedStore) -> tuple[list[ReleaseInfo], SiteInfo | None]:
    """The site's releases, each verified under the federation's keys, and
    the site's record; ([], None) when this store has not joined one."""
    from runtime.errors import FailedPrecondition
    from runtime.federation.documents import open_release_file
    from runtime.federation.state import SiteContext
    from runtime.storage.store import Kind
    from runtime.transparency.report import ReleaseInfo, SiteInfo

    try:
        site = SiteContext.open(store)
    except (NotFound, FailedPrecondition):
        return [], None
    releases = []
    for obj in store.list(Kind.RELEASE):
        if obj.name != site.kit.federation:
            continue
        envelope, _ = open_release_file(store.read_bytes(Kind.RELEASE, obj.name, obj.version),
                                        site.release_key)
        m = site.trusted().verify(envelope)
        releases.append(ReleaseInfo(m.federation, m.version, m.parent_version,
                                    m.base_model_sha256, m.adapter_sha256, m.adapter_bytes,
                                    m.created, dict(m.metrics),
                                    m.version == site.record.applied_version,
                                    m.trigger.doc() if m.trigger is not None else None))
    rec = site.record
    info = SiteInfo(rec.site, rec.federation, rec.applied_version, rec.high_water,
                    len(rec.answered), [a.noise_multiplier for a in rec.answered])
    return releases, info


def cmd_report(args: argparse.Namespace) -> int:
    from runtime._proto.hearth.v1 import inference_pb2
    from runtime.cli.storage import parse_since
    from runtime.config import Config, load_config
    from runtime.native import build_info
    from runtime.storage.audit import AuditLog
    from runtime.storage.audit_verify import LOG_NAME
    from runtime.transparency.report import ReportSources, build_report
    from runtime.transparency.report_render import render_html, render_model_card
    from runtime.transparency.report_sign import (
        REPORT,
        SIGNATURE,
        encode,
        key_block,
        report_signer,
        sign,
    )

    if not args.out:
        raise ConfigError("--out: the folder to write the report to is required")
    config = load_config(args.config) if args.config else Config()
    doctor = _doctor(args, config) if not args.no_doctor else None
    out = Path(args.out)
    with opened_store(args) as store:
        has_log = (store.state_dir / "audit" / LOG_NAME).exists()
        audit = AuditLog(store) if has_log else None
        releases, site = _federation(store)
        signer = report_signer(store)
        sources = ReportSources(config=config, store=store, audit=audit, engine=build_info(),
                                releases=releases, site=site, doctor=doctor,
                                since=parse_since(args.since) if args.since else None,
                                now=time.time(),
                                explanations=hasattr(inference_pb2, "ExplainRequest"))
        doc = {"schema": "hearth-report/1",
               "signing_key": key_block(signer.public_key()), **build_report(sources)}
        data = encode(doc)
        digest = hashlib.sha256(data).hexdigest()
        out.mkdir(parents=True, exist_ok=True)
        (out / REPORT).write_bytes(data)
        (out / SIGNATURE).write_bytes(sign(data, signer))
        (out / "report.html").write_text(render_html(doc), encoding="utf-8")
        (out / "MODEL_CARD.md").write_text(render_model_card(doc, digest), encoding="utf-8")
        if audit is not None and doc["audit_chain"]["verified"]:  # the log names the report
            audit.record_admin("report.generated", {"sha256": digest,
                                                    "audit_seq": doc["audit_chain"]["seq"]})
    if audit is not None and not doc["audit_chain"]["verified"]:
        print(f"warning: the audit log is broken ({doc['audit_chain'].get('break')}); the "
              "report says so, and `hearth report verify` will fail until it is repaired",
              file=sys.stderr)
    missing = [i["item"] for i in doc["art13_3"] if i["status"] != "present"]
    print(json.dumps({"out": str(out), "sha256": digest,
                      "fingerprint": doc["signing_key"]["fingerprint"],
                      "audit_seq": doc["audit_chain"].get("seq"),
                      "art13_3_incomplete": missing}))
    return ExitCode.OK


def cmd_report_verify(args: argparse.Namespace) -> int:
    from runtime.transparency.report_sign import verify_report

    directory = state_dir(args.state_dir)
    if keyed(args):
        with opened_store(args) as store:
            verdict = verify_report(Path(args.dir), directory, args.fingerprint, store)
    else:
        verdict = verify_report(Path(args.dir), directory, args.fingerprint)
    bound = (f"bound to audit record {verdict.audit_seq} of a verified log of "
             f"{verdict.audit_records} records" if verdict.audit_seq
             else "it names no audit chain")
    print(f"report intact: signed by {verdict.fingerprint}; {bound}")
    return ExitCode.OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="evaluations of the served model (offline, on the model)")
    esub = ev.add_subparsers(dest="eval_command", required=True)
    p = esub.add_parser("bias", help="gender-occupation association, with 95%% intervals")
    add_common(p)
    p.add_argument("--adapter", default="", help="evaluate with this LoRA adapter")
    p.add_argument("--out", default="bias-report",
                   help="folder for bias.json, bias.png and bias.svg")
    p.add_argument("--parallel", type=int, default=8,
                   help="continuations scored at once (the daemon batches them; default 8)")
    add_state_options(p)    # given a master key, the result is sealed for `hearth report`
    p.set_defaults(func=cmd_eval_bias)

    r = sub.add_parser("report", help="the signed transparency report (EU AI Act Art. 13, "
                                      "model card); `hearth report verify DIR` checks one")
    r.add_argument("--out", help="folder for report.json, its .sig, report.html, MODEL_CARD.md")
    r.add_argument("--since", help="start of the period (ISO date/time or Unix time); default: "
                                   "the log's start")
    r.add_argument("--config", help="hearth.toml: its models, [report] and [audit]")
    r.add_argument("--unit", help="the unit file whose exposure is rated (default: the "
                                  "installed hearth.service)")
    r.add_argument("--no-doctor", action="store_true", help="leave out `hearth doctor`'s checks")
    add_state_options(r)
    r.set_defaults(func=cmd_report)
    rsub = r.add_subparsers(dest="report_command")
    v = rsub.add_parser("verify", help="check the signature and that the audit chain head it "
                                       "names is in the (verified) log")
    v.add_argument("dir", help="the report's folder")
    v.add_argument("--fingerprint", help="SHA-256 of the report signing key (printed when the "
                                         "report was made); needed without the master key")
    add_state_options(v)
    v.set_defaults(func=cmd_report_verify)
