"""The daemon's site agent without a model or a coordinator: the rollback
decision, the trial that feeds it, the alarm report and its delivery (retry,
backoff, give-up, file), and the automatic rollback end to end over fakes."""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime.config import FederationConfig, ModelConfig
from runtime.errors import ConfigError
from runtime.events import DriftDetected, EventBus, RequestFinished, RequestSignals
from runtime.federation import site_agent as agent_mod
from runtime.federation.reports import ReportKind, read_report, report_files
from runtime.federation.site_agent import (
    ReleaseTrial,
    ReportSender,
    SiteAgent,
    alarm_report,
    backoff_s,
    federation_models,
    judge_release,
)

DIGEST = "ab" * 32


# ---- the decision ----------------------------------------------------------------------

def test_judge_release_waits_for_enough_requests_then_compares_means() -> None:
    """Fails if the margin is ignored (2.04 > 2.0 would roll back) or if a
    verdict comes before `after` requests."""
    prev = [2.0] * 10
    assert judge_release(prev, [3.0] * 9, after=10, margin=0.05) is None
    assert judge_release(prev, [2.04] * 10, 10, 0.05) == pytest.approx((2.0, 2.04, False))
    assert judge_release(prev, [2.06] * 10, 10, 0.05) == pytest.approx((2.0, 2.06, True))
    assert judge_release(prev, [1.5] * 10, 10, 0.05)[2] is False      # better: kept


def test_judge_release_without_a_baseline_never_rolls_back() -> None:
    """Fails if a short or empty baseline were compared (mean of [] or of
    nine values against ten)."""
    assert judge_release([2.0] * 9, [9.0] * 10, 10, 0.05) is None
    assert judge_release([], [9.0] * 10, 10, 0.05) is None


def test_the_trial_compares_the_last_window_before_the_swap_with_the_first_after() -> None:
    """The baseline is the last `after` NLLs under the previous release (the
    older ones do not count); fails if the window were not bounded."""
    trial = ReleaseTrial(after=4, margin=0.1)
    for x in [9.0, 9.0, 1.0, 1.0, 1.0, 1.0]:        # only the last four are the baseline
        assert trial.observe(x) is None
    trial.start(previous=1, new=2)
    assert [trial.observe(1.2) for _ in range(3)] == [None] * 3
    verdict = trial.observe(1.2)
    assert verdict is not None and verdict.rollback
    assert (verdict.from_version, verdict.to_version) == (2, 1)
    assert verdict.previous_nll == pytest.approx(1.0) and verdict.current_nll == pytest.approx(1.2)
    assert "automatic" in verdict.reason
    assert trial.observe(5.0) is None                # judged once


def test_no_trial_without_a_full_baseline_or_from_the_base_model() -> None:
    """Fails if start() opened a trial on three NLLs, or for the first
    release (previous 0: there is no release to roll back to)."""
    trial = ReleaseTrial(after=4, margin=0.1)
    for _ in range(3):
        trial.observe(1.0)
    trial.start(previous=1, new=2)                   # three NLLs only
    assert all(trial.observe(9.0) is None for _ in range(10))
    for _ in range(4):
        trial.observe(1.0)
    trial.start(previous=0, new=1)                   # the first release: nothing to go back to
    assert all(trial.observe(9.0) is None for _ in range(10))


def test_backoff_doubles_and_is_capped() -> None:
    """Fails without the cap (attempt 7 would wait 128 s)."""
    assert [backoff_s(i) for i in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]


# ---- which models, which report ---------------------------------------------------------

def test_federation_models_by_name_or_by_the_base_models_file(tmp_path: Path) -> None:
    """Fails if paths were compared without resolving links, or if a model
    the daemon does not serve could be named."""
    base = tmp_path / "base.gguf"
    base.write_bytes(b"x")
    (tmp_path / "link.gguf").symlink_to(base)
    models = [ModelConfig("a", path=str(tmp_path / "link.gguf")),
              ModelConfig("b", path=str(tmp_path / "other.gguf"))]
    assert federation_models(FederationConfig(), models, str(base)) == ["a"]
    assert federation_models(FederationConfig(model="b"), models, str(base)) == ["b"]
    with pytest.raises(ConfigError, match=r"federation\.model"):
        federation_models(FederationConfig(model="c"), models, str(base))
    with pytest.raises(ConfigError, match="no model served is the base model"):
        federation_models(FederationConfig(), models[1:], str(base))


def fake_site(applied: int = 3) -> Any:
    return SimpleNamespace(kit=SimpleNamespace(federation="clinics"),
                           record=SimpleNamespace(site="ward-0", applied_version=applied,
                                                  high_water=applied),
                           base_model_sha256=DIGEST, signing_key=Ed25519PrivateKey.generate())


def alarm(model: str = "tiny") -> DriftDetected:
    return DriftDetected(model=model, version=f"{model}@fed-clinics",
                         signals={"prompt_nll": (5.1, 1e-5), "prompt_embedding": (2.0, 0.2),
                                  "finish_stop": (float("nan"), float("nan"))},
                         threshold=1e-4, window=20, reference_size=40, observed=90)


def test_an_alarm_report_names_the_model_release_and_p_values_and_verifies() -> None:
    """Fails if a NaN p-value (a signal not evaluated yet) were passed on:
    the report's parser refuses p-values outside [0, 1]."""
    site = fake_site()
    report = alarm_report(site, alarm(), now=1000.0)
    assert report.kind is ReportKind.DRIFT_ALARM and report.adapter_version == 3
    assert report.p_values == {"prompt_nll": 1e-5, "prompt_embedding": 0.2}   # NaN left out
    from runtime.federation.reports import sign_report
    got = read_report(sign_report(report, site.signing_key),
                      {"ward-0": site.signing_key.public_key()}, "clinics", DIGEST,
                      now=1001.0, max_age_s=3600)
    assert got == report


# ---- delivery ------------------------------------------------------------------------------

class RpcFailure(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"fake {self._code.name}"


@dataclass
class FakeSend:
    failures: list[grpc.StatusCode] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    calls: int = 0

    def __call__(self, site: Any, envelope: bytes, address: str | None) -> None:
        self.calls += 1
        if self.failures:
            raise RpcFailure(self.failures.pop(0))
        self.sent.append(envelope)


def deliver(cfg: FederationConfig, send: FakeSend, monkeypatch: pytest.MonkeyPatch
            ) -> tuple[ReportSender, list[tuple[str, dict]]]:
    monkeypatch.setattr(agent_mod, "backoff_s", lambda attempt: 0.01)
    audit: list[tuple[str, dict]] = []
    site = fake_site()
    sender = ReportSender(lambda: site, cfg, lambda a, d: audit.append((a, d)),
                          threading.Event(), send)
    sender.start()
    sender.submit(alarm_report(site, alarm(), time.time()))
    sender.close()
    return sender, audit


def test_a_report_is_retried_while_the_coordinator_is_unreachable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails without the retry loop (one UNAVAILABLE would lose the alarm)."""
    send = FakeSend([grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
    sender, audit = deliver(FederationConfig(report_alarms=True), send, monkeypatch)
    assert send.calls == 3 and len(send.sent) == 1 and len(sender.delivered) == 1
    assert [a for a, _ in audit] == ["federation.report_sent"]


def test_a_refused_report_is_not_retried_and_is_audited_as_failed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails if every error were retried (5 calls) or the failure not audited."""
    send = FakeSend([grpc.StatusCode.PERMISSION_DENIED])
    sender, audit = deliver(FederationConfig(report_alarms=True), send, monkeypatch)
    assert send.calls == 1 and not sender.delivered
    assert audit[0][0] == "federation.report_failed" and "PERMISSION_DENIED" in audit[0][1]["error"]


def test_a_report_gives_up_after_a_bounded_number_of_attempts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails if the retries were unbounded (50 calls)."""
    send = FakeSend([grpc.StatusCode.UNAVAILABLE] * 50)
    sender, audit = deliver(FederationConfig(report_alarms=True), send, monkeypatch)
    assert send.calls == agent_mod.REPORT_ATTEMPTS and not sender.delivered
    assert [a for a, _ in audit] == ["federation.report_failed"]


def test_an_air_gapped_site_writes_the_signed_report_file(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails if report_dir still sent over the network, or wrote a file
    others may read."""
    send = FakeSend()
    _, audit = deliver(FederationConfig(report_dir=str(tmp_path / "media")), send,
                            monkeypatch)
    assert send.calls == 0
    (path,) = report_files(tmp_path / "media")
    assert path.stat().st_mode & 0o077 == 0
    assert audit[0][0] == "federation.report_written"


# ---- the agent over fakes: alarms and automatic rollback --------------------------------

class FakeContext:
    """What SiteAgent needs of a SiteContext, with rollback recorded."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        site = state["site"]
        self.kit, self.base_model_sha256 = site.kit, site.base_model_sha256
        self.signing_key = site.signing_key
        self.record = SimpleNamespace(site="ward-0", applied_version=state["applied"],
                                      high_water=state["high_water"])

    def rollback(self, version: int) -> Any:
        self.state["applied"] = version
        self.state["rolled_back_to"] = version
        return SimpleNamespace(federation="clinics", version=version, adapter_sha256="cd" * 32)


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def make_agent(monkeypatch: pytest.MonkeyPatch, cfg: FederationConfig
               ) -> tuple[SiteAgent, dict[str, Any], list, list, FakeSend, EventBus]:
    state = {"site": fake_site(2), "applied": 2, "high_water": 2}
    monkeypatch.setattr(SiteAgent, "open_site", lambda self: FakeContext(state))
    swaps: list[tuple[str, str, str]] = []
    audit: list[tuple[str, dict]] = []

    async def swap(model: str, adapter: str, source: Any, version: int) -> None:
        swaps.append((model, adapter, f"{source}#{version}"))

    send = FakeSend()
    events = EventBus()
    agent = SiteAgent(cfg, store=None, models=["tiny"], events=events, swap=swap,
                      audit=lambda a, d: audit.append((a, d)), send=send)
    return agent, state, swaps, audit, send, events


def finished(nll: float, adapter: str = "fed-clinics", model: str = "tiny") -> RequestFinished:
    return RequestFinished("r", model, "c", "generate", "ok", "length", 3, 4, 0, 0, 0, 0,
                           adapter=adapter, drift=RequestSignals(nll, 1.0, None))


def wait_until(cond: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_worse_release_is_rolled_back_audited_swapped_back_and_reported(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """v1's last 5 requests average 1.0 nats; v2's first 5 average 1.3 >
    1.0 + 0.1: back to v1.  Fails if on_request ignored the adapter's NLLs
    (no verdict), or the rollback skipped the audit, swap or report."""
    cfg = FederationConfig(report_alarms=True, rollback_after=5, rollback_margin=0.1)
    agent, state, swaps, audit, send, events = make_agent(monkeypatch, cfg)
    lt = LoopThread()
    agent.start(lt.loop)
    try:
        for _ in range(5):
            events.publish(finished(1.0))
        events.publish(finished(9.0, adapter=""))          # the base model: not counted
        events.publish(finished(9.0, model="other"))       # another model: not counted
        agent.trial.start(previous=1, new=2)               # what step() does after a swap
        for _ in range(5):
            events.publish(finished(1.3))
        wait_until(lambda: agent.rollbacks and send.sent)
    finally:
        agent.close()
        lt.close()
    assert state["rolled_back_to"] == 1 and agent.served == 1
    assert swaps == [("tiny", "fed-clinics", "store:fed-clinics#1")]
    (action, detail), *rest = audit
    assert action == "federation.rollback" and detail["reason"] == "automatic"
    assert (detail["from_version"], detail["to_version"]) == (2, 1)
    assert detail["current_nll"] == pytest.approx(1.3)
    assert [a for a, _ in rest] == ["federation.report_sent"]
    site = state["site"]
    report = read_report(send.sent[0], {"ward-0": site.signing_key.public_key()}, "clinics",
                         DIGEST, time.time(), 60)
    assert report.kind is ReportKind.ROLLBACK and report.adapter_version == 2


def test_a_release_as_good_as_the_last_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """1.05 is within 1.0 + 0.1: kept.  Fails if the margin were ignored."""
    cfg = FederationConfig(rollback_after=5, rollback_margin=0.1)
    agent, state, swaps, audit, _, events = make_agent(monkeypatch, cfg)
    for _ in range(5):
        events.publish(finished(1.0))
    agent.trial.start(previous=1, new=2)
    for _ in range(20):
        events.publish(finished(1.05))
    time.sleep(0.1)
    assert not agent.rollbacks and "rolled_back_to" not in state and not swaps and not audit


def test_an_alarm_on_a_federation_model_is_reported_others_are_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails if on_drift did not check the model (two reports)."""
    agent, _, _, audit, send, events = make_agent(
        monkeypatch, FederationConfig(report_alarms=True))
    lt = LoopThread()
    agent.start(lt.loop)
    try:
        events.publish(alarm("other"))
        events.publish(alarm("tiny"))
        wait_until(lambda: send.sent)
    finally:
        agent.close()
        lt.close()
    assert len(send.sent) == 1
    assert [a for a, _ in audit] == ["federation.report_sent"]


# ---- the config --------------------------------------------------------------------------

def test_the_federation_and_retention_keys_are_validated_and_off_by_default() -> None:
    """Fails if a bad coordinator address or model name were let through,
    or if anything here were on without being asked for."""
    from runtime.config import parse_config

    cfg = parse_config({})
    assert not (cfg.federation.report_alarms or cfg.federation.report_dir
                or cfg.federation.auto_apply or cfg.drift.retain_for_training)
    assert (cfg.federation.rollback_after, cfg.federation.rollback_margin,
            cfg.drift.retention_days) == (100, 0.05, 30)
    ok = parse_config({"federation": {"coordinator": "10.0.0.1:7443", "auto_apply": True,
                                      "model": "gemma", "rollback_margin": 0.1},
                       "drift": {"retain_for_training": True, "retention_days": 7}})
    assert ok.federation.coordinator == "10.0.0.1:7443" and ok.drift.retention_days == 7
    for table, bad, match in (
            ({"coordinator": "no-port"}, "federation", "federation.coordinator"),
            ({"model": "bad name\n"}, "federation", "federation.model"),
            ({"rollback_after": 0}, "federation", "federation.rollback_after"),
            ({"rollback_margin": -1}, "federation", "federation.rollback_margin"),
            ({"retention_days": 0}, "drift", "drift.retention_days"),
            ({"retain_for_training": "yes"}, "drift", "drift.retain_for_training")):
        with pytest.raises(ConfigError, match=match):
            parse_config({bad: table})
