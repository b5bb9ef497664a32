"""What the `hearth fed` commands do, on a sealed store: set up the
coordinator, enroll and join sites, and the air-gapped round (plan file,
update files, collect, publish, import).  The online transport
(online.py) uses the same functions for what it shares with these.
"""
from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from runtime.errors import FailedPrecondition, HearthError, InvalidArgument, NotFound
from runtime.federation.aggregate import SiteUpdate
from runtime.federation.coordinator import Coordinator, FederationSettings, Published
from runtime.federation.documents import (
    SiteKit,
    SiteRequest,
    b64,
    raw_public,
    seal_release_file,
    unb64,
)
from runtime.federation.participant import (
    LocalUpdate,
    Trainer,
    heldout_split,
    local_update,
    plain_payload,
    split_notes,
)
from runtime.federation.pki import FederationAuthority, make_site_request, pem_cert, pem_key
from runtime.federation.plan import RoundPlan, TrainerSettings, accept_plan
from runtime.federation.state import (
    CoordinatorRecord,
    SiteContext,
    SiteRecord,
    build_coordinator,
    coordinator_keys,
    file_sha256,
    load_coordinator_record,
    load_site_record,
    record_progress,
    save_coordinator_keys,
    save_coordinator_record,
    save_site_record,
)
from runtime.federation.update_bundle import seal_update
from runtime.storage.fsutil import atomic_write
from runtime.storage.store import Kind, SealedStore

log = logging.getLogger("hearth.federation")

_PRIVATE_RAW = (serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                serialization.NoEncryption())
PLAN_FILE = "plan.json"


def private_write(path: Path, data: bytes) -> Path:
    """Files for removable media: written whole (storage's atomic writer), mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)
    return path


# ---- coordinator setup ----------------------------------------------------------------------

def init_coordinator(store: SealedStore, settings: FederationSettings, base_model_path: str
                     ) -> CoordinatorRecord:
    try:
        store.read_bytes(Kind.FEDERATION, "coordinator")
    except NotFound:
        pass
    else:
        raise FailedPrecondition("this state directory already holds a federation coordinator")
    authority = FederationAuthority.create(settings.federation)
    save_coordinator_keys(store, authority.signing_key, X25519PrivateKey.generate(),
                          secrets.token_bytes(32), pem_key(authority.ca_key))
    record = CoordinatorRecord(settings, str(Path(base_model_path).resolve()),
                               pem_cert(authority.ca_cert).decode())
    save_coordinator_record(store, record)
    return record


def coordinator_authority(store: SealedStore, record: CoordinatorRecord) -> FederationAuthority:
    from cryptography import x509

    signing, _, _ = coordinator_keys(store)
    ca_key = serialization.load_pem_private_key(store.read_bytes(Kind.KEY, "fed-ca"), None)
    ca_cert = x509.load_pem_x509_certificate(record.ca_cert_pem.encode())
    return FederationAuthority(record.settings.federation, signing, ca_key,  # type: ignore[arg-type]
                               ca_cert)


def issue_kit(store: SealedStore, request: bytes, coordinator_address: str = "") -> SiteKit:
    """Enrolls the site of `request`: its certificate, and the kit it joins with."""
    record = load_coordinator_record(store)
    req = SiteRequest.loads(request)
    if req.site in record.sites:
        raise FailedPrecondition(f"site {req.site!r} is already enrolled")
    authority = coordinator_authority(store, record)
    cert = authority.issue_site(req.csr_pem.encode())
    signing, exchange, release_key = coordinator_keys(store)
    kit = SiteKit(
        federation=record.settings.federation, site=req.site, coordinator=coordinator_address,
        ca_cert_pem=record.ca_cert_pem, site_cert_pem=pem_cert(cert).decode(),
        federation_key=b64(raw_public(signing.public_key())),
        coordinator_exchange_key=b64(raw_public(exchange.public_key())),
        base_model_sha256=record.settings.base_model_sha256,
        sealed_release_key=SiteKit.seal_release_key(release_key, req.exchange_public(),
                                                    req.site))
    record.sites[req.site] = req.signing_key
    save_coordinator_record(store, record)
    return kit


# ---- site setup ------------------------------------------------------------------------------

def enroll_site(store: SealedStore, site: str) -> SiteRequest:
    try:
        existing = load_site_record(store)
    except FailedPrecondition:
        existing = None
    if existing is not None and existing.kit:
        raise FailedPrecondition(f"this state directory is already site {existing.site!r} of "
                                 f"federation {existing.federation!r}")
    tls_key, csr = make_site_request(site)
    signing, exchange = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    store.put_bytes(Kind.KEY, "fed-site-tls", pem_key(tls_key))
    store.put_bytes(Kind.KEY, "fed-site-signing", signing.private_bytes(*_PRIVATE_RAW))
    store.put_bytes(Kind.KEY, "fed-site-exchange", exchange.private_bytes(*_PRIVATE_RAW))
    save_site_record(store, SiteRecord(site=site))
    return SiteRequest(site=site, csr_pem=csr.decode(),
                       signing_key=b64(raw_public(signing.public_key())),
                       exchange_key=b64(raw_public(exchange.public_key())))


def join_site(store: SealedStore, kit_bytes: bytes, base_model_path: str) -> SiteKit:
    record = load_site_record(store)
    kit = SiteKit.loads(kit_bytes)
    if kit.site != record.site:
        raise InvalidArgument(f"site kit: issued for {kit.site!r}, this is {record.site!r}")
    exchange = X25519PrivateKey.from_private_bytes(store.read_bytes(Kind.KEY, "fed-site-exchange"))
    release_key = kit.open_release_key(exchange)
    digest = file_sha256(base_model_path)
    if digest != kit.base_model_sha256:
        raise InvalidArgument(f"base model {base_model_path}: SHA-256 {digest[:12]}..., the "
                              f"federation trains {kit.base_model_sha256[:12]}...")
    store.put_bytes(Kind.KEY, "fed-release", release_key)
    record.federation, record.kit = kit.federation, kit_bytes.decode()
    record.base_model_path = str(Path(base_model_path).resolve())
    save_site_record(store, record)
    return kit


# ---- a site's round ----------------------------------------------------------------------

@dataclass
class SiteData:
    train: list[str]
    heldout: list[str]


def site_data(store: SealedStore, data: str, heldout: str | None) -> SiteData:
    """Training text from sealed data sets (`hearth data add`)."""
    try:
        notes = split_notes(store.read_bytes(Kind.DATASET, data).decode("utf-8"))
        if heldout:
            return SiteData(notes, split_notes(store.read_bytes(Kind.DATASET, heldout)
                                               .decode("utf-8")))
    except UnicodeDecodeError:
        raise InvalidArgument("data: a data set must be UTF-8 text") from None
    except NotFound as exc:
        raise NotFound(f"data: {exc} (add it with `hearth data add NAME PATH`)") from None
    train, held = heldout_split(notes)
    return SiteData(train, held)


def site_trainer(site: SiteContext, plan_trainer: TrainerSettings, threads: int | None,
                 reuse: Trainer | None = None) -> Trainer:
    """A trainer for the plan's adapter shape; `reuse` when it has that shape
    already (loading the base weights is the slow part: seconds for Gemma)."""
    from runtime.federation.train import LoraSpec, LoraTrainer

    t = plan_trainer
    spec = LoraSpec(rank=t.rank, scheme=t.scheme, seed=t.seed)
    if reuse is not None and reuse.spec == spec:
        return reuse
    return LoraTrainer(site.record.base_model_path, spec, threads=threads)  # type: ignore[return-value]


def global_trainable(site: SiteContext, trainer: Trainer) -> np.ndarray:
    from runtime.federation.train import trainable_from_adapter
    from runtime.federation.train.adapter import initial_trainable

    adapter = site.global_adapter()
    if adapter is None:
        return initial_trainable(trainer.layout, trainer.spec)
    return trainable_from_adapter(trainer.layout, trainer.spec, adapter)


def accept_site_plan(site: SiteContext, envelope: bytes) -> RoundPlan:
    plan = accept_plan(envelope, site.federation_keys(), site.kit.federation,
                       site.base_model_sha256, site.record.applied_version, time.time())
    # The adapter's rank, scheme and shared A come from the plan; later
    # evaluations of the release need them again.
    site.store.put_bytes(Kind.FEDERATION, "last-plan", json.dumps(asdict(plan.trainer)).encode())
    return plan


def train_for_plan(site: SiteContext, plan: RoundPlan, data: SiteData, threads: int | None,
                   seed: int | None = None, reuse: Trainer | None = None
                   ) -> tuple[LocalUpdate, Trainer]:
    trainer = site_trainer(site, plan.trainer, threads, reuse)
    start = global_trainable(site, trainer)
    rng = np.random.default_rng(seed if seed is not None else secrets.randbits(63))
    return local_update(plan, trainer, start, data.train, data.heldout, rng), trainer


def export_update(site: SiteContext, plan_envelope: bytes, data: SiteData, out_dir: Path,
                  threads: int | None = None) -> tuple[Path, LocalUpdate]:
    """`hearth fed export-update`: an update file for the coordinator."""
    plan = accept_site_plan(site, plan_envelope)
    if plan.secure_aggregation:
        raise FailedPrecondition("round plan: asks for secure aggregation, which needs the "
                                 "online transport; air-gapped rounds use DP and encryption")
    upd, _ = train_for_plan(site, plan, data, threads)
    blob = seal_update(SiteUpdate(site.record.site, plain_payload(upd), upd.tokens),
                       site.kit.federation, plan.round, site.signing_key,
                       site.coordinator_exchange())
    name = f"{site.kit.federation}-r{plan.round}-{site.record.site}.hupd"
    return private_write(out_dir / name, blob), upd


def evaluate_site(site: SiteContext, data: SiteData, threads: int | None = None,
                  reuse: Trainer | None = None) -> float:
    """Held-out perplexity with the applied release (the base model before
    one), under the trainer settings of the last plan the site took part in."""
    trainer = site_trainer(site, last_trainer_settings(site), threads, reuse)
    trainer.set_trainable(global_trainable(site, trainer))
    return trainer.perplexity(data.heldout)


def last_trainer_settings(site: SiteContext) -> TrainerSettings:
    try:
        return TrainerSettings(**json.loads(site.store.read_bytes(Kind.FEDERATION, "last-plan")))
    except NotFound:
        return TrainerSettings()


# ---- the coordinator's air-gapped round -----------------------------------------------------

def open_plan(store: SealedStore) -> tuple[Coordinator, CoordinatorRecord, bytes]:
    """The open round's plan (opening one when none is), kept in the record
    so collect and publish, run later, see the same round."""
    record = load_coordinator_record(store)
    c = build_coordinator(store, record)
    if record.open_plan:
        return c, record, unb64(record.open_plan, "open plan")
    envelope = c.open_round(time.time())
    record.open_plan = b64(envelope)
    save_coordinator_record(store, record)
    return c, record, envelope


def _reopen(store: SealedStore) -> tuple[Coordinator, CoordinatorRecord]:
    """The coordinator with its open round restored from the record."""
    record = load_coordinator_record(store)
    if not record.open_plan:
        raise FailedPrecondition("no round is open: run `hearth fed plan --out DIR` first")
    c = build_coordinator(store, record)
    c.reopen_round(unb64(record.open_plan, "open plan"))
    return c, record


def _round_updates(store: SealedStore, federation: str, round_no: int) -> list[bytes]:
    prefix = f"{federation}.r{round_no}."
    return [store.read_bytes(Kind.UPDATE, o.name, o.version) for o in store.list(Kind.UPDATE)
            if o.name.startswith(prefix)]


def collect_updates(store: SealedStore, directory: Path) -> tuple[list[str], list[str]]:
    """(accepted sites, refusals): each file is checked now, kept sealed,
    and checked again at publish."""
    c, record = _reopen(store)
    assert c.current is not None
    for blob in _round_updates(store, record.settings.federation, c.current.plan.round):
        c.submit_update(blob)
    accepted, refused = [], []
    for path in sorted(directory.glob("*.hupd")):
        try:
            site = c.submit_update(path.read_bytes())
        except HearthError as exc:
            refused.append(f"{path.name}: {exc}")
            continue
        store.put_bytes(Kind.UPDATE, f"{record.settings.federation}.r{c.current.plan.round}.{site}",
                        path.read_bytes())
        accepted.append(site)
    return accepted, refused


def publish_round(store: SealedStore, out_dir: Path | None) -> tuple[Published, Path | None]:
    c, record = _reopen(store)
    assert c.current is not None
    for blob in _round_updates(store, record.settings.federation, c.current.plan.round):
        c.submit_update(blob)
    published = c.close_round(time.time())
    blob = store_release(store, record, c, published)
    path = None
    if out_dir is not None:
        path = private_write(out_dir / f"{record.settings.federation}-v{published.version}.hrel",
                             blob)
    return published, path


def store_release(store: SealedStore, record: CoordinatorRecord, c: Coordinator,
                  published: Published) -> bytes:
    _, _, release_key = coordinator_keys(store)
    blob = seal_release_file(published.envelope, published.adapter, release_key)
    store.put_bytes(Kind.RELEASE, record.settings.federation, blob)
    record_progress(record, c)
    record.open_plan = ""
    save_coordinator_record(store, record)
    for r in published.rejected:
        log.warning("round %d: update from %s not counted: %s", c.rounds_done, r.site, r.reason)
    return blob
