"""`hearth fed coordinator`: the gRPC server around the round driver."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc

from runtime import errors
from runtime._proto.hearth.federation.v1 import federation_pb2_grpc as fgrpc
from runtime.federation.online import (
    CHANNEL_OPTIONS,
    FederationServicer,
    RoundDriver,
    server_credentials,
)
from runtime.federation.operations import coordinator_authority
from runtime.federation.pki import pem_cert, pem_key
from runtime.federation.state import build_coordinator, coordinator_keys, load_coordinator_record
from runtime.storage.fsutil import atomic_write
from runtime.storage.store import SealedStore

log = logging.getLogger("hearth.federation")


def _host(listen: str) -> str:
    host = listen.rpartition(":")[0].strip("[]")
    if not host:
        raise errors.ConfigError(f"--listen: {listen!r} is not HOST:PORT")
    return host


async def serve_rounds(store: SealedStore, listen: str, rounds: int, step_seconds: float,
                       ready_file: str | None, linger: float) -> dict[str, Any]:
    if rounds < 1:
        raise errors.ConfigError("--rounds: must be >= 1")
    record = load_coordinator_record(store)
    if record.open_plan:
        raise errors.FailedPrecondition("an air-gapped round is open (`hearth fed plan`); "
                                        "publish it before running online rounds")
    coordinator = build_coordinator(store, record)
    _, _, release_key = coordinator_keys(store)
    authority = coordinator_authority(store, record)
    # The server's certificate lives as long as the process: the CA key in the
    # store can always issue another, and sites trust the CA, not this key.
    key, cert = authority.issue_server([_host(listen)])
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    driver = RoundDriver(store, record, coordinator, release_key, rounds, step_seconds)
    fgrpc.add_FederationServicer_to_server(FederationServicer(driver), server)
    creds = server_credentials(pem_cert(authority.ca_cert), pem_key(key), pem_cert(cert))
    port = server.add_secure_port(listen, creds)
    if port == 0:
        raise errors.Unavailable(f"cannot listen on {listen}")
    await server.start()
    address = f"{listen.rpartition(':')[0]}:{port}"
    if ready_file:
        atomic_write(Path(ready_file), address.encode(), mode=0o666)   # umask decides
    log.info("federation %s: coordinator on %s, %d sites enrolled",
             record.settings.federation, address, len(coordinator.sites))
    try:
        await driver.run()
        await asyncio.sleep(linger)     # sites fetch the last release
    finally:
        await server.stop(grace=1.0)
    return {"federation": record.settings.federation, "address": address,
            "versions": [p.version for p in driver.published],
            "round_seconds": [round(s, 3) for s in driver.round_seconds],
            "epsilon": coordinator.epsilon(),
            "metrics": [p.manifest.metrics for p in driver.published]}
