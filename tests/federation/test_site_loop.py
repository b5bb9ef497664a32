"""The site's round, written once against `CoordinatorLink`, on real sealed
stores with the real trainer and the tiny model: the privacy floor and the
at-most-once rule hold before any training and across a restart
(SECURITY-CASES 31), and whole noisy rounds run through a loopback link
(the coordinator's steps in this process, as python-tuf's repository
simulator stands in for a repository).

On e3a5e70 these fail: `SitePolicy` was never consulted and no ledger
existed, so the refused plans below were trained for and answered twice.
Checked by edits, run and reverted: without `site.record_answer(...)` in
`accept_site_plan` the restart test and the noisy-rounds test fail; without
the `check_site_policy(...)` call in `accept_plan` the floor test and the
restart test fail (and the policy tests of test_plan.py).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import AlreadyExists, FailedPrecondition
from runtime.federation import site_loop
from runtime.federation.coordinator import FederationSettings
from runtime.federation.enrollment import enroll_site, init_coordinator, issue_kit, join_site
from runtime.federation.files import FileLink, export_update, open_plan
from runtime.federation.plan import RoundPlan, SitePolicy, TrainerSettings, site_epsilon_after
from runtime.federation.rounds import CoordinatorRounds, Delivery
from runtime.federation.site_loop import CoordinatorLink, participate
from runtime.federation.site_training import SiteData
from runtime.federation.state import SiteContext, file_sha256
from runtime.federation.train import LoraSpec, lora_layout, trainable_size
from runtime.storage.keys import KeySource
from runtime.storage.store import SealedStore

KEY = KeySource("key-file", "test", b"k" * 32)
TRAINER = TrainerSettings(rank=2, steps=2, learning_rate=0.01, batch_tokens=64)
DATA = SiteData(train=[f"patient {i} was seen in the ward and given {i} mg" for i in range(8)],
                heldout=["patient 9 was seen in the ward and given 9 mg"])


def federation(root: Path, model: Path, noise: float = 1.0, secagg: bool = False
               ) -> tuple[SealedStore, Path]:
    """A coordinator store and a joined site's state directory."""
    spec = LoraSpec(rank=TRAINER.rank, scheme=TRAINER.scheme, seed=TRAINER.seed)
    coordinator = SealedStore.init(root / "coordinator", KEY)
    init_coordinator(coordinator, FederationSettings(
        federation="clinics", base_model_sha256=file_sha256(model),
        trainable_size=trainable_size(lora_layout(str(model), spec), spec), trainer=TRAINER,
        clip_norm=1.0, noise_multiplier=noise, min_sites=1, secure_aggregation=secagg),
        str(model))
    site = SealedStore.init(root / "site", KEY)
    try:
        request = enroll_site(site, "ward-0")
        kit = issue_kit(coordinator, request.dumps())
        join_site(site, kit.dumps(), str(model))
    finally:
        site.close()
    return coordinator, root / "site"


class LoopbackLink(CoordinatorLink):
    """The coordinator's round steps in this process: a plan per round, the
    release as soon as the one site has sent its update."""

    def __init__(self, rounds: CoordinatorRounds, n_rounds: int) -> None:
        self.rounds, self.left = rounds, n_rounds
        self.envelope: bytes | None = None
        self.releases: dict[int, bytes] = {}
        self.norms: list[float] = []          # of each update the coordinator took

    def fetch_plan(self, after_round: int) -> bytes | None:
        if self.rounds.c.current is None:
            if not self.left:
                return None
            self.left -= 1
            _, self.envelope = self.rounds.open(time.time(), resumable=False)
        return self.envelope

    def submit_update(self, plan: RoundPlan, site: str, sealed_update: bytes) -> None:
        before = np.array(self.rounds.c.global_trainable, np.float64)
        self.rounds.take_update(Delivery(sealed_update, site, site))
        published, blob = self.rounds.close(time.time())
        # one site: the round's mean is its update
        self.norms.append(float(np.linalg.norm(self.rounds.c.global_trainable - before)))
        self.releases[published.version] = blob

    def fetch_release(self, after_version: int) -> bytes | None:
        newer = [v for v in self.releases if v > after_version]
        return self.releases[max(newer)] if newer else None


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kw: object) -> None:
        raise AssertionError("trained for a plan the site should have refused")
    monkeypatch.setattr(site_loop, "train_for_plan", refuse)


def test_noisy_rounds_through_the_site_loop(tmp_path: Path, tiny_model: Path) -> None:
    """Two rounds with DP on, through `participate`: each update the
    coordinator takes carries the plan's noise (z * C = 1 per value, so its
    norm is about sqrt(n), far above the clip norm of 1 that a noiseless
    clipped update cannot exceed), both plans are in the ledger, and the
    site's own epsilon is the coordinator's."""
    coordinator, site_dir = federation(tmp_path, tiny_model, noise=1.0)
    rounds = CoordinatorRounds(coordinator)
    link = LoopbackLink(rounds, 2)
    site = SealedStore.open(site_dir, KEY)
    try:
        ctx = SiteContext.open(site)
        run = participate(ctx, link, DATA, SitePolicy(min_noise_multiplier=1.0,
                                                      max_epsilon=10.0, max_rounds_per_day=2),
                          threads=1, seed=0)
        assert run.rounds == [1, 2] and run.releases == [1, 2]
        assert [a.round for a in ctx.record.answered] == [1, 2]
        assert ctx.record.applied_version == 2
        site_epsilon = site_epsilon_after(ctx.record.answered[:1], 1.0)
    finally:
        site.close()
    n = rounds.c.settings.trainable_size
    for norm in link.norms:
        assert 0.9 * np.sqrt(n) < norm < 1.0 + 1.1 * np.sqrt(n)
    assert rounds.c.epsilon() == pytest.approx(site_epsilon)
    coordinator.close()


def test_a_plan_below_the_floor_is_refused_before_training(
        tmp_path: Path, tiny_model: Path, no_training: None) -> None:
    coordinator, site_dir = federation(tmp_path, tiny_model, noise=0.0)
    _, plan_file = open_plan(coordinator, tmp_path / "media")
    site = SealedStore.open(site_dir, KEY)
    try:
        ctx = SiteContext.open(site)
        with pytest.raises(FailedPrecondition, match=r"below this site's floor of 0\.5"):
            export_update(ctx, plan_file.read_bytes(), DATA, tmp_path / "out",
                          SitePolicy(min_noise_multiplier=0.5))
        assert ctx.record.answered == [] and not (tmp_path / "out").exists()
    finally:
        site.close()
        coordinator.close()


def test_the_same_plan_is_answered_once_even_after_a_restart(
        tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    coordinator, site_dir = federation(tmp_path, tiny_model, noise=1.0)
    _, plan_file = open_plan(coordinator, tmp_path / "media")
    coordinator.close()
    site = SealedStore.open(site_dir, KEY)
    try:
        path, _ = export_update(SiteContext.open(site), plan_file.read_bytes(), DATA,
                                tmp_path / "out", threads=1)
    finally:
        site.close()
    # a new process: the ledger comes from the sealed store
    def refuse(*args: object, **kw: object) -> None:
        raise AssertionError("trained for a plan the site had answered")
    monkeypatch.setattr(site_loop, "train_for_plan", refuse)
    site = SealedStore.open(site_dir, KEY)
    try:
        with pytest.raises(AlreadyExists, match="already answered it"):
            export_update(SiteContext.open(site), plan_file.read_bytes(), DATA,
                          tmp_path / "out-again")
    finally:
        site.close()
    assert [p.name for p in (tmp_path / "out").iterdir()] == [path.name]
    assert not (tmp_path / "out-again").exists()


def test_a_secure_aggregation_plan_over_files_is_refused_before_it_is_recorded(
        tmp_path: Path, tiny_model: Path, no_training: None) -> None:
    coordinator, site_dir = federation(tmp_path, tiny_model, noise=1.0, secagg=True)
    _, plan_file = open_plan(coordinator, tmp_path / "media")
    coordinator.close()
    site = SealedStore.open(site_dir, KEY)
    try:
        ctx = SiteContext.open(site)
        link = FileLink(plan_file.read_bytes(), tmp_path / "out")
        with pytest.raises(FailedPrecondition, match="needs the online transport"):
            site_loop.take_part(ctx, link, plan_file.read_bytes(), DATA)
        assert ctx.record.answered == []
        # the online steps are refused by the file transport itself too
        with pytest.raises(FailedPrecondition, match="cannot carry it"):
            link.unmask(1, None)  # type: ignore[arg-type]
    finally:
        site.close()
