"""Client subcommands: they talk to a running daemon over gRPC."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterable
from typing import Any

import grpc

from runtime import errors
from runtime._proto.hearth.v1 import inference_pb2 as ipb
from runtime._proto.hearth.v1 import models_pb2 as mpb
from runtime.client import Credentials, HearthClient
from runtime.core.options import CLI_OPTIONS, Kind
from runtime.exit_codes import ExitCode

DEFAULT_ADDR = "127.0.0.1:50051"
_STATES = {0: "unspecified", 1: "loading", 2: "ready", 3: "draining", 4: "failed", 5: "unloaded"}
_FINISH = {0: "", 1: "stop", 2: "length", 3: "cancelled", 4: "deadline", 5: "error"}


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--addr", default=os.environ.get("HEARTH_ADDR", DEFAULT_ADDR),
                   help=f"daemon address, HOST:PORT or unix:PATH; replicas as a comma-separated "
                        f"list or dns:///NAME (docs/scale-out.md) (default $HEARTH_ADDR or "
                        f"{DEFAULT_ADDR})")
    p.add_argument("--model", default="", help="model name (optional if only one is loaded)")
    g = p.add_argument_group("credentials")
    g.add_argument("--token", default=os.environ.get("HEARTH_TOKEN", ""),
                   help="bearer token (default $HEARTH_TOKEN)")
    g.add_argument("--tls-ca", default="", help="CA certificate of the server (turns TLS on)")
    g.add_argument("--tls-cert", default="", help="client certificate (mTLS)")
    g.add_argument("--tls-key", default="", help="client key (mTLS)")


def connect(args: argparse.Namespace) -> HearthClient:
    return HearthClient(args.addr, credentials=Credentials(args.token, args.tls_ca,
                                                           args.tls_cert, args.tls_key))


# What a person at a terminal gets when they ask for nothing else: about a
# screenful, and repetition curbed (small models loop without it).  The API's
# own defaults (server.max_tokens_default, no penalty) stay as documented.
CLI_MAX_TOKENS = next(row.cli_default for row in CLI_OPTIONS if row.name == "max_tokens")


def add_sampling(p: argparse.ArgumentParser) -> None:
    """A flag for each generation option the table gives one (--max-tokens
    for max_tokens); a list option's flag repeats.  Where the table gives the
    CLI its own default (a screenful, repetition curbed), the help says so."""
    for row in CLI_OPTIONS:
        flag = "--" + row.name.replace("_", "-")
        if row.kind is Kind.TEXT_LIST:
            p.add_argument(flag, action="append", default=[], help=f"{row.doc} (repeatable)")
        else:
            here = "" if row.cli_default is None else f" (default here: {row.cli_default})"
            p.add_argument(flag, type=int if row.kind is Kind.INT else float,
                           help=row.doc + here)
    p.add_argument("--stats", action="store_true", help="print usage and timings to stderr")


def _options(args: argparse.Namespace) -> dict:
    return {row.name: row.cli_default if getattr(args, row.name) is None
            else getattr(args, row.name) for row in CLI_OPTIONS}


def _print_stats(last: ipb.GenerateResponse) -> None:
    u = last.usage
    rate = u.completion_tokens / u.total_seconds if u.total_seconds else 0.0
    print(f"[{_FINISH.get(last.finish_reason, '?')}: {u.prompt_tokens} prompt "
          f"({u.cached_tokens} cached) + {u.completion_tokens} generated tokens, "
          f"first token {u.ttft_seconds * 1000:.0f} ms, {rate:.1f} tok/s{_energy(u)}]",
          file=sys.stderr)


def _energy(u: ipb.Usage) -> str:
    """', 1.23 J (0.0456 J/token, estimate)' when the daemon accounts energy.
    Per token of the request's work: prompt tokens computed plus generated."""
    if not u.energy_source:
        return ""
    tokens = u.prompt_tokens - u.cached_tokens + u.completion_tokens
    per = f"{u.energy_joules / tokens:.4g} J/token, " if tokens else ""
    return f", {u.energy_joules:.4g} J ({per}{u.energy_source})"


def _after_answer(args: argparse.Namespace, last: ipb.GenerateResponse | None) -> None:
    if last is None:
        return
    if args.stats:
        _print_stats(last)
    if args.max_tokens is None and _FINISH.get(last.finish_reason) == "length":
        print(f"[stopped at {CLI_MAX_TOKENS} tokens, the default here; --max-tokens N for "
              f"more]", file=sys.stderr)


def _stream(chunks: Iterable[ipb.GenerateResponse]) -> ipb.GenerateResponse | None:
    last = None
    for chunk in chunks:
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
        last = chunk
    return last


def cmd_generate(args: argparse.Namespace) -> int:
    prompt = args.prompt if args.prompt != "-" else sys.stdin.read()
    with connect(args) as c:
        last = _stream(c.generate(prompt, args.model, **_options(args)))
    sys.stdout.write("\n")
    sys.stdout.flush()
    _after_answer(args, last)
    return ExitCode.OK


def _chat_model(c: HearthClient, requested: str) -> str:
    """The model to chat with: the one asked for; else, with several loaded,
    the first (by name) that has a chat template, so that `hearth chat`
    after `make run` talks to the instruct model, not the base model."""
    if requested:
        return requested
    ready = [m for m in c.list_models().models if m.state == mpb.MODEL_STATE_READY]
    if len(ready) <= 1:
        return ""          # the server picks the only one, or says none is loaded
    # "none" is what Models.Get says of a model Chat refuses (models/manager.py)
    chat = sorted(m.name for m in ready if m.chat_template not in ("", "none"))
    if not chat:
        raise errors.FailedPrecondition(
            "none of the loaded models has a chat template (" +
            ", ".join(sorted(m.name for m in ready)) + "); see `hearth serve --chat-template`, "
            "or use `hearth generate`")
    if len(chat) > 1:
        print(f"hearth chat: talking to {chat[0]} (also loaded: {', '.join(chat[1:])}; "
              f"--model chooses)", file=sys.stderr)
    return chat[0]


def _read_turn(interactive: bool) -> str | None:
    """The next line the person typed, or None at the end.  At a terminal,
    Ctrl-C abandons the line being typed; Ctrl-D leaves."""
    if not interactive:
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None
    while True:
        try:
            return input("> ")
        except KeyboardInterrupt:
            print(file=sys.stderr)
        except EOFError:
            print(file=sys.stderr)
            return None


def _answer(c: HearthClient, args: argparse.Namespace, model: str,
            history: list[tuple[str, str]], interactive: bool) -> str:
    """Streams one answer and returns its text.  At a terminal, Ctrl-C
    cancels the request (the daemon frees the slot) and keeps the REPL."""
    call: Any = c.chat(history, model, **_options(args))    # a grpc.Call: cancellable
    reply: list[str] = []
    last = None
    try:
        for chunk in call:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            reply.append(chunk.text)
            last = chunk
    except KeyboardInterrupt:
        if not interactive:
            raise
        call.cancel()
        sys.stdout.write(" [stopped]")
    sys.stdout.write("\n")
    sys.stdout.flush()
    _after_answer(args, last)
    return "".join(reply)


def cmd_chat(args: argparse.Namespace) -> int:
    """A REPL at a terminal (line editing and in-session history through
    readline; nothing is written to disk, since conversations may be
    confidential); with piped input, one answer per line until EOF."""
    history: list[tuple[str, str]] = [("system", args.system)] if args.system else []
    interactive = sys.stdin.isatty()
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (input() gains editing and history)
    with connect(args) as c:
        model = _chat_model(c, args.model)
        if interactive:
            print(f"hearth chat{f' with {model}' if model else ''}: /reset clears the "
                  f"conversation, Ctrl-C stops an answer, /exit or Ctrl-D leaves",
                  file=sys.stderr)
        while True:
            line = _read_turn(interactive)
            if line is None or line.strip() == "/exit":
                return ExitCode.OK
            if line.strip() == "/reset":
                history = history[:1] if args.system else []
                continue
            if not line.strip():
                continue
            history.append(("user", line))
            try:
                history.append(("assistant", _answer(c, args, model, history, interactive)))
            except KeyboardInterrupt:
                # Ctrl-C just after an answer ended (outside its stream): the
                # turn is dropped, the REPL stays.
                if not interactive:
                    raise
                history.pop()
                sys.stdout.write("\n")


def _status_line(s: mpb.ModelStatus) -> str:
    line = f"{s.name:24} {_STATES.get(s.state, '?'):9}"
    if s.state == mpb.MODEL_STATE_READY:
        line += (f" slots {s.slots_busy}/{s.slots_total}  queue {s.queue_depth}/{s.max_queue}  "
                 f"ctx {s.n_ctx_per_request}/request  "
                 f"{(s.weights_bytes + s.kv_cache_bytes) / 2**20:.0f} MiB  {s.description}")
    if s.error:
        line += f"  error: {s.error}"
    return line


def cmd_models_list(args: argparse.Namespace) -> int:
    with connect(args) as c:
        reply = c.list_models()
    for m in reply.models:
        print(_status_line(m))
    for name in reply.available:
        print(f"{name:24} available")
    return ExitCode.OK


def cmd_models_get(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    with connect(args) as c:
        print(json_format.MessageToJson(c.get_model(args.name or ""),
                                        always_print_fields_with_no_presence=True))
    return ExitCode.OK


def cmd_models_load(args: argparse.Namespace) -> int:
    with connect(args) as c:
        print(_status_line(c.load_model(args.name, n_ctx=args.ctx, n_parallel=args.parallel)))
    return ExitCode.OK


def cmd_models_unload(args: argparse.Namespace) -> int:
    with connect(args) as c:
        print(_status_line(c.unload_model(args.name, args.drain_timeout)))
    return ExitCode.OK


def cmd_embed(args: argparse.Namespace) -> int:
    with connect(args) as c:
        reply = c.embed(args.text, args.model, normalize=not args.raw)
    for e in reply.embeddings:
        print(json.dumps([round(v, 6) for v in e.values]))
    return ExitCode.OK


def cmd_tokenize(args: argparse.Namespace) -> int:
    with connect(args) as c:
        tokens = c.tokenize(args.text, args.model, add_special=not args.no_special,
                            parse_special=args.parse_special)
        if args.pieces:
            for t in tokens:
                print(f"{t}\t{c.detokenize([t], args.model, render_special=True)!r}")
        else:
            print(" ".join(map(str, tokens)))
    return ExitCode.OK


def add_parsers(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Adds the client commands; returns the `models` subcommands so local
    store commands (`models import`) can join them."""
    p = sub.add_parser("generate", help="stream a completion of PROMPT ('-' reads stdin)")
    add_common(p)
    add_sampling(p)
    p.add_argument("prompt")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="chat with a model that has a chat template (a REPL at a "
                                    "terminal; one answer per line of piped input)")
    add_common(p)
    add_sampling(p)
    p.add_argument("--system", help="system prompt")
    p.set_defaults(func=cmd_chat)

    models = sub.add_parser("models", help="models of a running daemon; `import` seals one "
                                           "into the local store")
    msub = models.add_subparsers(dest="models_command", required=True)
    p = msub.add_parser("list", help="loaded models and the names Load accepts")
    add_common(p)
    p.set_defaults(func=cmd_models_list)
    p = msub.add_parser("get", help="a model's live state as JSON")
    add_common(p)
    p.add_argument("name", nargs="?", default="")
    p.set_defaults(func=cmd_models_get)
    p = msub.add_parser("load", help="load a model the daemon knows by name")
    add_common(p)
    p.add_argument("name")
    p.add_argument("--ctx", type=int, help="total context")
    p.add_argument("--parallel", type=int, help="slots")
    p.set_defaults(func=cmd_models_load)
    p = msub.add_parser("unload", help="drain and free a model")
    add_common(p)
    p.add_argument("name")
    p.add_argument("--drain-timeout", type=float, help="seconds running streams may take")
    p.set_defaults(func=cmd_models_unload)

    p = sub.add_parser("embed", help="print one JSON embedding per TEXT")
    add_common(p)
    p.add_argument("--raw", action="store_true", help="do not L2-normalise")
    p.add_argument("text", nargs="+")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("tokenize", help="print the token ids of TEXT")
    add_common(p)
    p.add_argument("--no-special", action="store_true", help="do not add BOS")
    p.add_argument("--parse-special", action="store_true")
    p.add_argument("--pieces", action="store_true", help="one token per line with its text")
    p.add_argument("text")
    p.set_defaults(func=cmd_tokenize)
    return msub


def rpc_error_exit(exc: grpc.RpcError) -> int:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    print(f"hearth: {code.name if code else 'error'}: {details}", file=sys.stderr)
    if code == grpc.StatusCode.UNAVAILABLE:
        return ExitCode.UNREACHABLE
    return ExitCode.REQUEST_FAILED
