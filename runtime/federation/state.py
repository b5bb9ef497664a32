"""Where the federation's state lives: the sealed store, like every other
artifact.  Keys are "key" objects, the coordinator's and the site's records
"federation" objects (JSON), releases "release" objects (one version per
release), received air-gapped updates "update" objects, the signed records
of candidates the gate refused "federation" objects gate-rejection.<federation>.r<round>
(gate.py), and the adapter a
site serves the "adapter" object fed-<federation> (a new version per
applied release or rollback, so the daemon loads it as store:fed-<name>).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from runtime.errors import FailedPrecondition, IntegrityError, NotFound, StorageError
from runtime.federation.coordinator import Coordinator, FederationSettings
from runtime.federation.documents import SiteKit, open_release_file, unb64
from runtime.federation.dp import PrivacyAccountant
from runtime.federation.plan import AnsweredPlan, RoundPlan, TrainerSettings, plan_id
from runtime.federation.release import (
    ReleaseManifest,
    TrustedReleases,
    key_fingerprint,
    open_envelope,
    parse_manifest,
)
from runtime.storage.store import Kind, SealedStore

_PRIVATE_RAW = (serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                serialization.NoEncryption())


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def adapter_name(federation: str) -> str:
    """The store name of the adapter a site serves: store:fed-<federation>."""
    return f"fed-{federation}"


def _get_json(store: SealedStore, name: str, role: str) -> dict[str, Any]:
    try:
        return dict(json.loads(store.read_bytes(Kind.FEDERATION, name)))
    except NotFound:
        raise FailedPrecondition(f"this state directory holds no federation {role}: run "
                                 f"`hearth fed {'init' if role == 'coordinator' else 'enroll'}`"
                                 " first") from None


def _key(store: SealedStore, name: str) -> bytes:
    return store.read_bytes(Kind.KEY, name)


# ---- the coordinator ------------------------------------------------------------------------

@dataclass(frozen=True)
class AcceptedReport:
    """A site report (reports.py) the coordinator accepted: what it said,
    never data.  `digest` (SHA-256 of the signed text) recognises the same
    report delivered again, over the other transport or replayed."""

    site: str
    kind: str                       # reports.ReportKind's value
    raised_at: float                # the site's clock
    received_at: float              # the coordinator's
    adapter_version: int
    digest: str
    p_values: dict[str, float] = field(default_factory=dict)
    detail: str = ""


@dataclass
class CoordinatorRecord:
    settings: FederationSettings
    base_model_path: str
    ca_cert_pem: str
    sites: dict[str, str] = field(default_factory=dict)     # name -> b64 raw Ed25519
    version: int = 0
    rounds_done: int = 0
    rdp: list[float] = field(default_factory=list)
    open_plan: str = ""                                     # b64 envelope of the open round
    # The service's memory (records from before it load with these empty):
    last_round: int = 0                     # highest round number opened: never reused
    round_starts: list[float] = field(default_factory=list)   # recent starts, for the policy
    reports: list[AcceptedReport] = field(default_factory=list)   # recent, newest last
    # every gate decision, newest last (GateDecision.summary() and the
    # round, the candidate's digest and the version it would have had)
    gate: list[dict[str, Any]] = field(default_factory=list)

    def dumps(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def loads(cls, data: bytes) -> CoordinatorRecord:
        doc = json.loads(data)
        s = doc.pop("settings")
        s["trainer"] = TrainerSettings(**s["trainer"])
        reports = [AcceptedReport(**r) for r in doc.pop("reports", [])]
        return cls(settings=FederationSettings(**s), reports=reports, **doc)


@contextlib.contextmanager
def coordinator_writer(store: SealedStore) -> Iterator[None]:
    """Held by every command that changes the coordinator's record (issue,
    plan, collect, publish, and `fed coordinator` while it runs): each
    keeps the record in memory and saves it whole, so a second writer at
    the same time would undo the first's change (a site enrolled, reports
    collected)."""
    path = store.state_dir / "federation-coordinator.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StorageError(f"{path}: cannot open: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FailedPrecondition(
                "another `hearth fed` command is changing this coordinator's record (the "
                "coordinator service?); stop it first (systemctl stop hearth-coordinator), "
                "or send reports to it over the network instead of `collect`") from None
        yield
    finally:
        os.close(fd)


def save_coordinator_record(store: SealedStore, record: CoordinatorRecord) -> None:
    store.put_bytes(Kind.FEDERATION, "coordinator", record.dumps())


def load_coordinator_record(store: SealedStore) -> CoordinatorRecord:
    _get_json(store, "coordinator", "coordinator")
    return CoordinatorRecord.loads(store.read_bytes(Kind.FEDERATION, "coordinator"))


def coordinator_keys(store: SealedStore) -> tuple[Ed25519PrivateKey, X25519PrivateKey, bytes]:
    """(federation signing key, update exchange key, release key)."""
    return (Ed25519PrivateKey.from_private_bytes(_key(store, "fed-signing")),
            X25519PrivateKey.from_private_bytes(_key(store, "fed-exchange")),
            _key(store, "fed-release"))


def save_coordinator_keys(store: SealedStore, signing: Ed25519PrivateKey,
                          exchange: X25519PrivateKey, release_key: bytes, ca_key_pem: bytes
                          ) -> None:
    store.put_bytes(Kind.KEY, "fed-signing", signing.private_bytes(*_PRIVATE_RAW))
    store.put_bytes(Kind.KEY, "fed-exchange", exchange.private_bytes(*_PRIVATE_RAW))
    store.put_bytes(Kind.KEY, "fed-release", release_key)
    store.put_bytes(Kind.KEY, "fed-ca", ca_key_pem)


def build_coordinator(store: SealedStore, record: CoordinatorRecord) -> Coordinator:
    from runtime.federation.train import (
        LoraSpec,
        adapter_from_trainable,
        lora_layout,
        trainable_from_adapter,
    )
    from runtime.federation.train.adapter import initial_trainable

    signing, exchange, release_key = coordinator_keys(store)
    t = record.settings.trainer
    spec = LoraSpec(rank=t.rank, scheme=t.scheme, seed=t.seed)
    layout = lora_layout(record.base_model_path, spec)
    # B = 0 (the adapter starts as a no-op); A from the seed for fedavg
    trainable = initial_trainable(layout, spec)
    if record.version:
        _, adapter = open_release_file(
            store.read_bytes(Kind.RELEASE, record.settings.federation, record.version),
            release_key)
        trainable = trainable_from_adapter(layout, spec, adapter)
    accountant = PrivacyAccountant(delta=record.settings.delta,
                                   epsilon_budget=record.settings.epsilon_budget)
    if record.rdp:
        accountant.rdp = list(record.rdp)
        accountant.rounds = record.rounds_done
    sites = {name: Ed25519PublicKey.from_public_bytes(unb64(key, "site key"))
             for name, key in record.sites.items()}
    return Coordinator(record.settings, signing, exchange, sites,
                       lambda v: adapter_from_trainable(layout, spec, v),
                       version=record.version, global_trainable=trainable,
                       accountant=accountant, rounds_done=record.rounds_done,
                       last_round=record.last_round)


def rejection_name(federation: str, round_no: int) -> str:
    return f"gate-rejection.{federation}.r{round_no}"


def save_rejection(store: SealedStore, federation: str, round_no: int, envelope: bytes
                   ) -> None:
    """A signed hearth-gate-rejection/1 record, sealed beside the record."""
    store.put_bytes(Kind.FEDERATION, rejection_name(federation, round_no), envelope)


def stored_rejections(store: SealedStore, federation: str) -> list[bytes]:
    """Every stored rejection record of the federation, oldest round first."""
    prefix = f"gate-rejection.{federation}.r"
    found = [(int(o.name[len(prefix):]), o) for o in store.list(Kind.FEDERATION)
             if o.name.startswith(prefix) and o.name[len(prefix):].isdigit()]
    return [store.read_bytes(Kind.FEDERATION, o.name, o.version)
            for _, o in sorted(found, key=lambda x: (x[0], x[1].version))]


def record_progress(record: CoordinatorRecord, c: Coordinator) -> None:
    assert c.accountant is not None
    record.version, record.rounds_done = c.version, c.rounds_done
    record.last_round = max(record.last_round, c.last_round)
    record.rdp = list(c.accountant.rdp)


def finish_interrupted_close(store: SealedStore, record: CoordinatorRecord) -> int | None:
    """Closing a round stores the release, then saves the record; a crash
    between the two leaves a signed release the record does not count.
    The stored release is the commit point: the record catches up with it
    (version, rounds; the privacy was saved at aggregation), so the next round builds on it and its
    version is never signed twice with other contents.  Returns the version
    taken in, None when nothing was pending."""
    name = record.settings.federation
    latest = max((o.version for o in store.list(Kind.RELEASE) if o.name == name), default=0)
    if latest <= record.version:
        return None
    signing, _, release_key = coordinator_keys(store)
    envelope, _ = open_release_file(store.read_bytes(Kind.RELEASE, name, latest), release_key)
    public = signing.public_key()
    manifest = parse_manifest(open_envelope(envelope, {key_fingerprint(public): public},
                                            "release"))
    if latest != record.version + 1 or manifest.version != latest or \
            manifest.parent_version != record.version:
        raise IntegrityError(f"federation {name}: the store holds release {latest} "
                             f"(manifest v{manifest.version}) but the record is at "
                             f"v{record.version}")
    # The round's privacy cost is already in the record: CoordinatorRounds.candidate
    # saves it when it aggregates, before any release is stored.
    record.version, record.rounds_done = latest, record.rounds_done + 1
    record.last_round = max(record.last_round, int(manifest.metrics.get("round", 0)))
    record.open_plan = ""
    save_coordinator_record(store, record)
    return latest


# ---- a site ---------------------------------------------------------------------------------

@dataclass
class SiteRecord:
    site: str
    federation: str = ""            # "" until the kit is joined
    kit: str = ""                   # the kit's JSON
    base_model_path: str = ""
    high_water: int = 0             # highest release version accepted
    applied_version: int = 0        # the release being served (below high_water after rollback)
    # Every plan this site trained for, recorded before training: a plan is
    # answered at most once, and the floor counts rounds and epsilon from it.
    answered: list[AnsweredPlan] = field(default_factory=list)

    def dumps(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()


def load_site_record(store: SealedStore) -> SiteRecord:
    doc = _get_json(store, "site", "site")
    answered = [AnsweredPlan(**a) for a in doc.pop("answered", [])]
    return SiteRecord(**doc, answered=answered)


def save_site_record(store: SealedStore, record: SiteRecord) -> None:
    store.put_bytes(Kind.FEDERATION, "site", record.dumps())


@dataclass
class SiteContext:
    """A joined site: its kit, keys and release decisions."""

    store: SealedStore
    record: SiteRecord
    kit: SiteKit
    signing_key: Ed25519PrivateKey
    release_key: bytes
    base_model_sha256: str

    @classmethod
    def open(cls, store: SealedStore) -> SiteContext:
        record = load_site_record(store)
        if not record.kit:
            raise FailedPrecondition(f"site {record.site} has enrolled but not joined: run "
                                     "`hearth fed join KIT`")
        kit = SiteKit.loads(record.kit.encode())
        signing = Ed25519PrivateKey.from_private_bytes(_key(store, "fed-site-signing"))
        return cls(store, record, kit, signing, _key(store, "fed-release"),
                   kit.base_model_sha256)

    def federation_keys(self) -> dict[str, Ed25519PublicKey]:
        key = Ed25519PublicKey.from_public_bytes(unb64(self.kit.federation_key,
                                                       "federation key"))
        return {key_fingerprint(key): key}

    def coordinator_exchange(self) -> X25519PublicKey:
        return X25519PublicKey.from_public_bytes(unb64(self.kit.coordinator_exchange_key,
                                                       "coordinator key"))

    def trusted(self) -> TrustedReleases:
        return TrustedReleases(self.kit.federation, self.federation_keys(),
                               self.base_model_sha256, self.record.high_water)

    def tls_material(self) -> tuple[bytes, bytes, bytes]:
        """(CA cert, site cert, site key) PEMs for the mTLS channel."""
        return (self.kit.ca_cert_pem.encode(), self.kit.site_cert_pem.encode(),
                _key(self.store, "fed-site-tls"))

    def record_answer(self, plan: RoundPlan, now: float) -> None:
        """Enters `plan` in the site's sealed ledger; done before training,
        so that a crash after the update left cannot lead to a second
        answer."""
        self.record.answered.append(AnsweredPlan(plan_id(plan), plan.round, now,
                                                 plan.noise_multiplier))
        save_site_record(self.store, self.record)

    def import_release(self, blob: bytes) -> ReleaseManifest:
        """Every check, then the release and its adapter go into the store
        and the high-water mark rises (SECURITY-CASES 9, 10)."""
        envelope, adapter = open_release_file(blob, self.release_key)
        trusted = self.trusted()
        manifest = trusted.accept(envelope, adapter)
        self.store.put_bytes(Kind.RELEASE, self.kit.federation, blob)
        self.store.put_bytes(Kind.ADAPTER, adapter_name(self.kit.federation), adapter)
        trusted.applied(manifest)
        self.record.high_water = trusted.high_water
        self.record.applied_version = manifest.version
        save_site_record(self.store, self.record)
        return manifest

    def stored_release(self, version: int) -> tuple[bytes, bytes]:
        for obj in self.store.list(Kind.RELEASE):
            if obj.name != self.kit.federation:
                continue
            blob = self.store.read_bytes(Kind.RELEASE, obj.name, obj.version)
            envelope, adapter = open_release_file(blob, self.release_key)
            if self.trusted().verify(envelope).version == version:
                return envelope, adapter
        raise NotFound(f"rollback: no stored release of version {version}")

    def rollback(self, version: int) -> ReleaseManifest:
        envelope, adapter = self.stored_release(version)
        manifest = self.trusted().rollback(envelope, adapter)
        self.store.put_bytes(Kind.ADAPTER, adapter_name(self.kit.federation), adapter)
        self.record.applied_version = manifest.version
        save_site_record(self.store, self.record)
        return manifest

    def global_adapter(self) -> bytes | None:
        """The adapter of the applied release, None before the first."""
        if not self.record.applied_version:
            return None
        return self.stored_release(self.record.applied_version)[1]
