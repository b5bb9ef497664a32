"""`hearth fed coordinator`: the gRPC server around rounds.drive_round and
online.GrpcExchange, shared by both modes: `--rounds N` (run N rounds, then
stop; `serve_rounds` below) and `--serve` (run until stopped, rounds by
policy: service.py)."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc

from runtime import errors
from runtime.federation.enrollment import coordinator_authority
from runtime.federation.online import GrpcExchange, add_federation_service, server_credentials
from runtime.federation.online_site import CHANNEL_OPTIONS
from runtime.federation.pki import pem_cert, pem_key
from runtime.federation.rounds import CoordinatorRounds, drive_round
from runtime.storage.fsutil import atomic_write
from runtime.storage.store import Kind, SealedStore

log = logging.getLogger("hearth.federation")


def _host(listen: str) -> str:
    host = listen.rpartition(":")[0].strip("[]")
    if not host:
        raise errors.ConfigError(f"--listen: {listen!r} is not HOST:PORT")
    return host


def online_rounds(store: SealedStore) -> CoordinatorRounds:
    """The coordinator's rounds, refused while an air-gapped round is open."""
    steps = CoordinatorRounds(store)
    if steps.record.open_plan:
        raise errors.FailedPrecondition("an air-gapped round is open (`hearth fed plan`); "
                                        "publish it before running online rounds")
    return steps


def serving_exchange(steps: CoordinatorRounds) -> GrpcExchange:
    """An exchange that already serves the latest release: a site that
    missed it (down, or the coordinator restarted) catches up from it."""
    exchange = GrpcExchange()
    if steps.record.version:
        exchange.releases[steps.record.version] = steps.store.read_bytes(
            Kind.RELEASE, steps.federation, steps.record.version)
    return exchange


@asynccontextmanager
async def coordinator_server(steps: CoordinatorRounds, exchange: GrpcExchange, listen: str,
                             ready_file: str | None,
                             reports: Callable[[bytes, str], object] | None = None
                             ) -> AsyncIterator[str]:
    """The Federation service over mutual TLS on `listen`, for the block;
    yields the bound address (written to `ready_file` once listening)."""
    authority = coordinator_authority(steps.store, steps.record)
    # The server's certificate lives as long as the process: the CA key in the
    # store can always issue another, and sites trust the CA, not this key.
    key, cert = authority.issue_server([_host(listen)])
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    add_federation_service(server, exchange, steps.c.sites, reports)
    creds = server_credentials(pem_cert(authority.ca_cert), pem_key(key), pem_cert(cert))
    port = server.add_secure_port(listen, creds)
    if port == 0:
        raise errors.Unavailable(f"cannot listen on {listen}")
    await server.start()
    address = f"{listen.rpartition(':')[0]}:{port}"
    try:
        if ready_file:
            atomic_write(Path(ready_file), address.encode(), mode=0o666)   # umask decides
        log.info("federation %s: coordinator on %s, %d sites enrolled", steps.federation,
                 address, len(steps.c.sites))
        yield address
    finally:
        await server.stop(grace=1.0)


async def serve_rounds(store: SealedStore, listen: str, rounds: int, step_seconds: float,
                       ready_file: str | None, linger: float,
                       reports: Callable[[bytes, str], object] | None = None
                       ) -> dict[str, Any]:
    if rounds < 1:
        raise errors.ConfigError("--rounds: must be >= 1")
    steps = online_rounds(store)
    exchange = serving_exchange(steps)
    published, round_seconds = [], []
    async with coordinator_server(steps, exchange, listen, ready_file, reports) as address:
        try:
            for _ in range(rounds):
                started = time.monotonic()
                published.append(await drive_round(steps, exchange, step_seconds))
                round_seconds.append(time.monotonic() - started)
        finally:
            await exchange.finish()
        await asyncio.sleep(linger)     # sites fetch the last release
    return {"federation": steps.federation, "address": address,
            "versions": [p.version for p in published],
            "round_seconds": [round(s, 3) for s in round_seconds],
            "epsilon": steps.c.epsilon(),
            "metrics": [p.manifest.metrics for p in published],
            # the gate's decision on each round's candidate (`version`: the
            # one it had or would have had)
            "gate": [{"version": p.manifest.version, "promoted": p.promoted,
                      "reason": p.gate.reason if p.gate is not None else ""}
                     for p in published]}
