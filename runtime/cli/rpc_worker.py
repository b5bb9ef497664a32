"""`hearth rpc-worker`: lend this box's devices to a daemon over ggml's RPC protocol.

The worker runs llama.cpp's RPC server (through the core, native/src/rpc.c)
bound to exactly the address given.  The protocol has no authentication or
encryption, so anything but loopback is refused unless --private-link states
that the address is on a private, authenticated link (docs/scale-out.md).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

from runtime.exit_codes import ExitCode


def cmd_rpc_worker(args: argparse.Namespace) -> int:
    from runtime.native import rpc

    rpc.check_listen(args.listen, args.private_link)
    if not rpc.available():
        print("hearth: the installed llama.cpp has no RPC backend (build llama-cpp-python "
              "with GGML_RPC=ON)", file=sys.stderr)
        return ExitCode.ERROR
    print(f"hearth rpc-worker: serving {args.device or 'every GPU, else the CPU'} on "
          f"{args.listen}" + (" (private link)" if args.private_link else ""), flush=True)
    # ggml's server loop never returns to Python, which would only note a
    # SIGINT: let Ctrl-C (like systemd's SIGTERM) end the process at once.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    rpc.serve(args.listen, args.device, args.threads)
    return ExitCode.ERROR   # serve() returns only by raising


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rpc-worker", help="lend this box's devices to a daemon (ggml RPC)")
    p.add_argument("--listen", required=True, metavar="IPV4:PORT",
                   help="the one address to bind: loopback, or with --private-link the "
                        "WireGuard / tunnel address")
    p.add_argument("--private-link", action="store_true",
                   help="state that --listen is reachable only over a private, authenticated "
                        "link (the protocol itself has no authentication or encryption)")
    p.add_argument("--device", default="",
                   help="ggml device to lend, as `hearth devices` names it (default: every "
                        "GPU, else the CPU)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="CPU threads when lending the CPU")
    p.set_defaults(func=cmd_rpc_worker)
