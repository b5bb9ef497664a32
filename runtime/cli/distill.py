"""`hearth distill`: a draft for speculative decoding, distilled from the model.

    hearth distill --model M --draft-layers K --data NAME [--heldout NAME]
                   [--steps N] [--rank R] (--out PATH | --store NAME) [--threads T]

M is a GGUF path or `store:NAME`; the data sets are sealed text (`hearth
data add`), blank-line separated notes or one per line; without --heldout
every tenth note is held out.  The draft keeps the model's first K blocks, a
LoRA trained to match the full model's next-token distribution is merged
into them (runtime/distill), and it is written to PATH or sealed in the
store as model NAME, ready for a `draft` naming it in the store.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from runtime.cli.state import add_state_options, opened_store
from runtime.distill.early_exit import MERGED_TYPES, check_draft_layers
from runtime.exit_codes import ExitCode
from runtime.names import check_name
from runtime.sources import STORE_PREFIX, parse_source
from runtime.storage.store import Kind

if TYPE_CHECKING:   # the job (numpy, the trainer) loads when a distillation runs
    from runtime.distill.job import DistillReport


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _print_report(r: DistillReport, where: str) -> None:
    print(f"draft of {r.draft_layers}/{r.model_layers} blocks written to {where}")
    print(f"{r.steps} steps, {r.tokens} positions, {r.train_seconds:.0f} s; training KL "
          f"{r.train_kl_first:.4f} -> {r.train_kl_last:.4f}")
    print(f"held-out KL(model || draft) {r.heldout_kl_before:.4f} -> {r.heldout_kl_after:.4f}")


def cmd_distill(args: argparse.Namespace) -> int:
    from runtime.distill.job import DistillSettings, distill
    from runtime.federation.site_training import site_data
    from runtime.federation.train.hparams import hparams_from_info
    from runtime.models.opener import open_source

    if args.store:
        check_name(args.store, "--store")
    settings = DistillSettings(draft_layers=args.draft_layers, steps=args.steps,
                               rank=args.rank, learning_rate=args.learning_rate,
                               batch_tokens=args.batch_tokens, seed=args.seed,
                               threads=args.threads, merged_type=args.merged_type)
    with opened_store(args) as store:
        model = open_source(parse_source(args.model), "model", "--model", store)
        try:
            check_draft_layers(args.draft_layers, hparams_from_info(model.info).n_layer)
            data = site_data(store, args.data, args.heldout)
            path = f"/proc/self/fd/{model.fd}"
            if args.out:
                report = distill(path, data.train, data.heldout, settings, args.out, _say)
                _print_report(report, args.out)
                return ExitCode.OK
            fd = os.memfd_create("hearth-distilled-draft", os.MFD_CLOEXEC)
            with os.fdopen(fd, "rb") as draft:
                report = distill(path, data.train, data.heldout, settings,
                                 f"/proc/self/fd/{fd}", _say)
                size = os.fstat(fd).st_size
                obj = store.put_stream(draft, size, Kind.MODEL, args.store,
                                       source="hearth distill")
            _print_report(report, f"the store as model {obj.name} version {obj.version}")
            return ExitCode.OK
        finally:
            model.close()


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="distil an early-exit draft for speculative decoding "
                                       "from a model, on sealed local text")
    add_state_options(p)
    p.add_argument("--model", required=True, help="the served model: a GGUF path or "
                                                  f"{STORE_PREFIX}NAME (the teacher)")
    p.add_argument("--draft-layers", type=int, required=True, metavar="K",
                   help="blocks the draft keeps (1 to the model's count minus one)")
    p.add_argument("--data", required=True, help="sealed data set to train on")
    p.add_argument("--heldout", help="sealed data set to measure on (default: every "
                                     "tenth note of --data, not trained on)")
    p.add_argument("--steps", type=int, default=200, help="optimiser steps (default 200)")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--learning-rate", type=float, default=2e-3,
                   help="AdamW step size (default 2e-3)")
    p.add_argument("--batch-tokens", type=int, default=128,
                   help="positions per step (default 128)")
    p.add_argument("--seed", type=int, default=0, help="seeds the LoRA and the text order")
    p.add_argument("--threads", type=int, help="torch threads (default: 2, 1 for tiny models)")
    p.add_argument("--merged-type", choices=MERGED_TYPES, default="q8_0",
                   help="how the draft stores its merged weights (default q8_0)")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", help="write the draft GGUF to this file")
    out.add_argument("--store", metavar="NAME", help="seal the draft in the store as model NAME")
    p.set_defaults(func=cmd_distill)
