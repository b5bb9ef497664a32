"""A site's training and evaluation on its sealed store: its data sets
(`hearth data add`), a trainer for a plan's adapter shape, the global
adapter it starts from, held-out perplexity, and the signed evaluation of
a round's candidate for the gate (gate.py).  The transports do not appear
here: site_loop.py calls these for whichever carries the round.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass

import numpy as np

from runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from runtime.federation.gate import CandidateEvaluation, open_candidate_file, sign_evaluation
from runtime.federation.participant import (
    LocalUpdate,
    Trainer,
    evaluate,
    heldout_split,
    local_update,
    split_notes,
)
from runtime.federation.plan import RoundPlan, TrainerSettings
from runtime.federation.state import SiteContext
from runtime.storage.store import Kind, SealedStore


@dataclass
class SiteData:
    train: list[str]
    heldout: list[str]


TRAFFIC = "traffic"     # the reserved data set: prompts the daemon kept (drift/retain.py)


def traffic_notes(store: SealedStore) -> list[str]:
    """The retained prompts still readable: an erased subject's and an
    expired day's are gone."""
    from runtime.drift.retain import retained_prompts
    from runtime.storage.audit import AuditLog

    notes = [n for p in retained_prompts(AuditLog(store)) if (n := p.strip())]
    if not notes:
        raise NotFound("data: no retained traffic (turn on [drift] retain_for_training)")
    return notes


def site_data(store: SealedStore, data: str, heldout: str | None) -> SiteData:
    """Training text from sealed data sets (`hearth data add`), or, for the
    reserved name `traffic`, from the prompts the daemon kept."""
    try:
        notes = traffic_notes(store) if data == TRAFFIC else \
            split_notes(store.read_bytes(Kind.DATASET, data).decode("utf-8"))
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


def remember_trainer_settings(site: SiteContext, plan: RoundPlan) -> None:
    """The adapter's rank, scheme and shared A come from the plan; later
    evaluations of the release need them again."""
    site.store.put_bytes(Kind.FEDERATION, "last-plan", json.dumps(asdict(plan.trainer)).encode())


def last_trainer_settings(site: SiteContext) -> TrainerSettings:
    try:
        return TrainerSettings(**json.loads(site.store.read_bytes(Kind.FEDERATION, "last-plan")))
    except NotFound:
        return TrainerSettings()


def train_for_plan(site: SiteContext, plan: RoundPlan, data: SiteData, threads: int | None,
                   seed: int | None = None, reuse: Trainer | None = None
                   ) -> tuple[LocalUpdate, Trainer]:
    """Start from the global adapter, train, clip, add noise (participant.py)."""
    trainer = site_trainer(site, plan.trainer, threads, reuse)
    start = global_trainable(site, trainer)
    rng = np.random.default_rng(seed if seed is not None else secrets.randbits(63))
    return local_update(plan, trainer, start, data.train, data.heldout, rng), trainer


def evaluate_site(site: SiteContext, data: SiteData, threads: int | None = None,
                  reuse: Trainer | None = None) -> float:
    """Held-out perplexity with the applied release (the base model before
    one), under the trainer settings of the last plan the site took part in."""
    trainer = site_trainer(site, last_trainer_settings(site), threads, reuse)
    trainer.set_trainable(global_trainable(site, trainer))
    return trainer.perplexity(data.heldout)


def evaluate_candidate(site: SiteContext, plan: RoundPlan, candidate_file: bytes,
                       data: SiteData, threads: int | None = None,
                       reuse: Trainer | None = None) -> tuple[bytes, CandidateEvaluation]:
    """The site's signed evaluation of the round's candidate and of the
    version it serves, both on its held-out data: what the gate counts."""
    from runtime.federation.train import trainable_from_adapter

    m, adapter = open_candidate_file(candidate_file, site.release_key, site.federation_keys())
    if (m.federation != site.kit.federation or m.base_model_sha256 != site.base_model_sha256
            or m.round != plan.round or m.parent_version != site.record.applied_version):
        raise FailedPrecondition(f"candidate: for round {m.round} of {m.federation!r} on "
                                 f"version {m.parent_version}; this site answered round "
                                 f"{plan.round} on version {site.record.applied_version}")
    trainer = site_trainer(site, plan.trainer, threads, reuse)
    current = global_trainable(site, trainer)
    trainer.set_trainable(trainable_from_adapter(trainer.layout, trainer.spec, adapter))
    _, cand = evaluate(trainer, data.heldout)
    trainer.set_trainable(current)
    _, cur = evaluate(trainer, data.heldout)
    ev = CandidateEvaluation(site.kit.federation, site.record.site, plan.round,
                             m.adapter_sha256, site.record.applied_version, cand, cur)
    return sign_evaluation(ev, site.signing_key), ev
