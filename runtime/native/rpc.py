"""ggml's RPC backend through the core: is it built in, probe a worker, run one.

A worker (`hearth rpc-worker`) lends its devices to a daemon whose model
lists it in `rpc_workers`; the engine probes and registers the workers when
that model loads (native/src/rpc.c).  The protocol has no authentication:
docs/scale-out.md says how to run it.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from runtime import errors
from runtime.native._ffi import check, ffi, last_error, lib


@dataclass(frozen=True)
class WorkerDevice:
    free_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class WorkerInfo:
    endpoint: str
    protocol: str                       # "major.minor.patch"
    devices: tuple[WorkerDevice, ...]

    @property
    def free_bytes(self) -> int:
        return sum(d.free_bytes for d in self.devices)


class WorkerSilent(errors.FailedPrecondition):
    """The worker accepted the connection but did not answer: another
    client holds it (it serves one at a time), or it is not a ggml RPC
    server of this protocol version."""


def available() -> bool:
    """Whether the installed llama.cpp has the RPC backend (GGML_RPC=ON)."""
    return bool(lib.hearth_rpc_available())


def probe(endpoint: str, timeout_s: float = 3.0) -> WorkerInfo:
    """The worker's protocol and devices.  FailedPrecondition naming the
    worker when it cannot be reached or does not answer (a worker serves one
    client at a time: one in use by a daemon does not answer a probe)."""
    out = ffi.new("hearth_rpc_worker_info *")
    try:
        check(lib.hearth_rpc_probe(endpoint.encode(), max(1, int(timeout_s * 1000)), out))
    except errors.FailedPrecondition as exc:
        if out.reachable:
            raise WorkerSilent(str(exc)) from None
        raise
    return WorkerInfo(endpoint, f"{out.proto_major}.{out.proto_minor}.{out.proto_patch}",
                      tuple(WorkerDevice(out.free_bytes[i], out.total_bytes[i])
                            for i in range(out.n_devices)))


def check_listen(endpoint: str, private_link: bool) -> None:
    """A worker binds one IPv4 address: loopback, or (with private_link, the
    operator's statement that the address is on a private authenticated link
    such as WireGuard) another unicast address; never the wildcard."""
    host, sep, port = endpoint.rpartition(":")
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        raise errors.InvalidArgument(
            f"--listen {endpoint!r}: expected IPV4:PORT (the worker binds exactly that "
            "address)") from None
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise errors.InvalidArgument(f"--listen {endpoint!r}: expected IPV4:PORT")
    if ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        raise errors.InvalidArgument(
            f"--listen {endpoint!r}: bind one address (the WireGuard or tunnel address), "
            "not every interface")
    if not ip.is_loopback and not private_link:
        raise errors.InvalidArgument(
            f"--listen {endpoint!r} is not a loopback address.  The RPC protocol has no "
            "authentication or encryption: expose it only on a private, authenticated link "
            "(WireGuard, an mTLS tunnel) and say so with --private-link")


def serve(endpoint: str, device: str = "", threads: int = 1) -> None:
    """Runs ggml's RPC server on `endpoint` until the process ends; raises
    only if it cannot start or stops."""
    status = lib.hearth_rpc_serve(endpoint.encode(), device.encode(), threads)
    check(status)
    raise errors.FailedPrecondition(last_error())
