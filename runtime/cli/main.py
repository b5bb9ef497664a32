"""Entry point of the `hearth` command."""
from __future__ import annotations

import argparse
import sys

import grpc

from runtime import __version__, errors
from runtime.cli import (
    bundle,
    client,
    distill,
    doctor,
    drift,
    energy,
    explain,
    fed,
    rpc_worker,
    serve,
    storage,
    tokens,
    transparency,
)
from runtime.exit_codes import HELP, ExitCode


def cmd_devices(args: argparse.Namespace) -> int:
    from runtime.native import build_info, list_devices

    print(build_info())
    for d in list_devices():
        print(f"{d.index}: {d.type:5} {d.name:12} {d.description}  "
              f"{d.free_bytes / 2**30:.1f}/{d.total_bytes / 2**30:.1f} GiB free")
    return ExitCode.OK


def cmd_default_model(args: argparse.Namespace) -> int:
    from runtime.models.default_model import prepare_default_models

    for _, path in prepare_default_models(args.dir):
        print(path)
    return ExitCode.OK


def cmd_exit_codes(args: argparse.Namespace) -> int:
    for code, text in HELP.items():
        print(f"{int(code):4}  {code.name:15} {text}")
    return ExitCode.OK


def exit_code_of(exc: errors.HearthError) -> int:
    for family, code in ((errors.ConfigError, ExitCode.CONFIG),
                         (errors.WrongKey, ExitCode.WRONG_KEY),
                         (errors.IntegrityError, ExitCode.INTEGRITY),
                         (errors.StorageError, ExitCode.STORAGE),
                         (errors.ModelLoadError, ExitCode.MODEL_LOAD)):
        if isinstance(exc, family):
            return code
    return ExitCode.ERROR


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hearth", description="On-premise LLM appliance runtime")
    p.add_argument("--version", action="version", version=f"hearth {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the daemon")
    serve.add_arguments(s)
    s.set_defaults(func=serve.main)
    models = client.add_parsers(sub)
    storage.add_parsers(sub, models)
    tokens.add_parsers(sub)
    bundle.add_parsers(sub)
    fed.add_parsers(sub)
    drift.add_parsers(sub)
    energy.add_parsers(sub)
    transparency.add_parsers(sub)
    explain.add_parsers(sub)
    distill.add_parser(sub)
    doctor.add_parser(sub)
    rpc_worker.add_parser(sub)
    d = sub.add_parser("devices", help="show the devices ggml can use")
    d.set_defaults(func=cmd_devices)
    d = sub.add_parser("default-model", help="prepare the default models (Gemma 3 270M, "
                                                 "SmolLM2-135M-Instruct)")
    d.add_argument("--dir", default="models", help="where to write it (default: models/)")
    d.set_defaults(func=cmd_default_model)
    d = sub.add_parser("exit-codes", help="what each exit status means")
    d.set_defaults(func=cmd_exit_codes)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except grpc.RpcError as exc:
        return client.rpc_error_exit(exc)
    except errors.HearthError as exc:
        print(f"hearth: {exc}", file=sys.stderr)
        return exit_code_of(exc)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
