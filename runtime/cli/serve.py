"""`hearth serve`: the command line to a Config and the models to load;
runtime/daemon.py runs the daemon from there."""
from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from runtime import errors
from runtime.cli.state import add_state_options, keyed, open_store
from runtime.config import Config, ModelConfig, load_config, validate_model
from runtime.config_values import check_config_name, check_listen_address, check_source
from runtime.daemon import disable_core_dumps, serve
from runtime.exit_codes import ExitCode
from runtime.logs import setup_logging
from runtime.storage.store import SealedStore

log = logging.getLogger("hearth.serve")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="hearth.toml")
    p.add_argument("--listen", action="append", metavar="HOST:PORT|unix:PATH",
                   help="address to serve on (repeatable; replaces server.listen)")
    p.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                   help="serve the GGUF at PATH as NAME (repeatable); NAME alone serves the "
                        "model of that name from the config, else from the sealed store")
    p.add_argument("--parallel", type=int, metavar="N",
                   help="slots (sequences decoded together) of --model models")
    p.add_argument("--ctx", type=int, metavar="N", help="total context of --model models")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads of --model models")
    p.add_argument("--n-gpu-layers", metavar="N|auto", help="layers to offload (--model models)")
    p.add_argument("--max-queue", type=int, metavar="N",
                   help="requests waiting beyond the slots (--model models)")
    p.add_argument("--chat-template", metavar="NAME|JINJA",
                   help="chat template of --model models: a llama.cpp template name "
                        "(chatml, gemma, llama3, ...) or Jinja text; default: the GGUF's own "
                        "(a model without one is refused by Chat)")
    p.add_argument("--models-dir", help="folder whose NAME.gguf files Models.Load accepts")
    p.add_argument("--log-format", choices=["text", "json"])
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--draft", metavar="PATH|store:NAME",
                   help="speculative decoding for --model models: a small draft model with "
                   "the same tokenizer")
    p.add_argument("--n-draft", type=int, metavar="N",
                   help="tokens the draft proposes per step (default 4, at most 16)")
    p.add_argument("--response-cache-mb", type=int, metavar="MB",
                   help="keep deterministic answers (greedy or seeded requests) in an "
                   "in-memory LRU of this size, per caller (default 0: off)")
    p.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help="serve Prometheus metrics here (loopback only)")
    p.add_argument("--http-listen", metavar="HOST:PORT",
                   help="serve the OpenAI-compatible HTTP API here (/v1/...; beyond "
                        "loopback only with auth.require)")
    add_state_options(p)
    p.add_argument("--drift", action="store_true",
                   help="watch live traffic for drift ([drift] with its defaults, "
                        "unless hearth.toml sets them; docs/drift.md)")
    p.add_argument("--no-energy", action="store_true",
                   help="do not account energy per request ([energy] enabled = false; "
                        "docs/energy.md)")
    p.add_argument("--no-audit", action="store_true",
                   help="do not write the audit log (it is on whenever a master key is given)")
    p.add_argument("--audit-content", action="store_true",
                   help="also log prompts and responses, sealed per subject (erasable)")
    p.add_argument("--ready-file", metavar="PATH",
                   help="once serving, write {\"pid\", \"addresses\"} as JSON here (for "
                        "supervisors and tests; useful with port 0)")


def _int_arg(name: str, value: int | None, lo: int) -> int | None:
    if value is not None and value < lo:
        raise errors.ConfigError(f"--{name}: must be >= {lo}, got {value}")
    return value


def build_config(args: argparse.Namespace) -> tuple[Config, list[ModelConfig]]:
    """The config file, then the command line on top; returns the models to
    load at start."""
    config = load_config(args.config) if args.config else Config()
    server = config.server
    if args.listen:
        server = replace(server, listen=tuple(check_listen_address(a, "--listen")
                                              for a in args.listen))
    if args.http_listen:
        if args.http_listen.startswith("unix:"):
            raise errors.ConfigError("--http-listen: must be HOST:PORT")
        check_listen_address(args.http_listen, "--http-listen")
    for key in ("models_dir", "log_format", "log_level", "metrics_listen", "http_listen"):
        if getattr(args, key):
            server = replace(server, **{key: getattr(args, key)})
    cache_mb = _int_arg("response-cache-mb", args.response_cache_mb, 0)
    if cache_mb is not None:
        server = replace(server, response_cache_mb=cache_mb)
    if args.no_audit:
        server = replace(server, audit=False)
    if args.audit_content:
        server = replace(server, audit_content=True)
    overrides: dict[str, Any] = {k: v for k, v in {
        "n_parallel": _int_arg("parallel", args.parallel, 1),
        "n_ctx": _int_arg("ctx", args.ctx, 16),
        "threads": _int_arg("threads", args.threads, 1),
        "max_queue": _int_arg("max-queue", args.max_queue, 0),
        "n_draft": _int_arg("n-draft", args.n_draft, 1),
    }.items() if v is not None}
    if args.chat_template:
        overrides["chat_template"] = args.chat_template
    if args.draft:
        overrides["draft"] = check_source(args.draft, "--draft").resolved_against(Path.cwd())
    if args.n_gpu_layers is not None:
        if args.n_gpu_layers != "auto" and not args.n_gpu_layers.lstrip("-").isdigit():
            raise errors.ConfigError("--n-gpu-layers: must be an integer or auto")
        overrides["n_gpu_layers"] = (args.n_gpu_layers if args.n_gpu_layers == "auto"
                                     else int(args.n_gpu_layers))
    models = {n: m for n, m in config.models.items() if m.load}
    for spec in args.model:
        name, sep, path = spec.partition("=")
        check_config_name(name, "--model")
        if sep:
            base = ModelConfig(name=name, path=path)
        elif name in config.models:
            base = config.models[name]
        else:
            base = ModelConfig(name=name, store=True)
        if "n_parallel" in overrides and "n_ctx" not in overrides:
            # keep the per-slot context when only the slot count changes
            overrides_here = {**overrides,
                              "n_ctx": base.n_ctx // base.n_parallel * overrides["n_parallel"]}
        else:
            overrides_here = overrides
        model = replace(base, **overrides_here)
        validate_model(model, f"--model {name}: ")
        models[name] = model
    if args.drift:
        config = replace(config, drift=replace(config.drift, enabled=True))
    if getattr(args, "no_energy", False):
        config = replace(config, energy=replace(config.energy, enabled=False))
    return replace(config, server=server), list(models.values())


def store_for(args: argparse.Namespace, models: list[ModelConfig]) -> SealedStore | None:
    """The sealed store, when a model comes from it or a master key is given."""
    if not keyed(args) and not any(m.store for m in models):
        return None
    return open_store(args)


def main(args: argparse.Namespace) -> int:
    disable_core_dumps()     # first: nothing secret is read before it
    try:
        config, models = build_config(args)
    except errors.ConfigError as exc:
        setup_logging()
        log.error("%s", exc)
        return ExitCode.CONFIG
    return serve(config, models, lambda: store_for(args, models), args.ready_file,
                 reload_config=lambda: build_config(args))
