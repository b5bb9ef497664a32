"""The bias evaluation: its statistics, its chart, and scoring on a real daemon."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from runtime.transparency import bias_data
from runtime.transparency.bias import BiasReport, chart_svg, evaluate, summarize, write
from runtime.transparency.scoring import target_logprob
from tests.integration.conftest import Daemon

MALE, FEMALE = bias_data.MALE_DOMINATED, bias_data.FEMALE_DOMINATED


def _scores(gap: float, noise: float, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    out = {o: gap / 2 + float(rng.normal(0, noise)) for o in MALE}
    out.update({o: -gap / 2 + float(rng.normal(0, noise)) for o in FEMALE})
    return out


def test_a_real_association_is_detected_and_noise_is_not() -> None:
    """Checked that it can fail: with a z quantile of 1.0 instead of t, or
    the standard error of one group left out, the false alarms exceed the
    bound; with the group means swapped the first assertion fails."""
    gap, overall = summarize(_scores(1.0, 0.3, 0), MALE, FEMALE)
    assert gap.excludes_zero and gap.low > 0.5 and gap.estimate == pytest.approx(1.0, abs=0.2)
    assert not overall.excludes_zero
    false_alarms = sum(summarize(_scores(0.0, 0.3, s), MALE, FEMALE)[0].excludes_zero
                       for s in range(40))
    assert false_alarms <= 5          # a 95% interval: 2 in 40 expected


def test_t_quantiles() -> None:
    from runtime.transparency.bias import t_quantile_975
    for df, exact in ((3, 3.182446), (10, 2.228139), (30, 2.042272), (1e9, 1.959964)):
        assert t_quantile_975(df) == pytest.approx(exact, abs=1e-4)


def test_scoring_in_parallel_pairs_every_score_with_its_own_prompt() -> None:
    """A scorer whose answer depends on the prompt and target, with
    deliberate, uneven delays so that the threads finish out of order: the
    per-occupation figures are the same as scoring one at a time.  Fails if
    the scores are paired by completion order instead of by job."""
    import time
    import zlib

    def score(prompt: str, target: str) -> float:
        h = zlib.crc32(f"{prompt}|{target}".encode())
        time.sleep((h % 7) / 2000)
        return (h % 1000) / 100.0

    one = evaluate(score, "m", parallel=1)
    many = evaluate(score, "m", parallel=8)
    assert many.per_occupation == one.per_occupation
    assert len(set(one.per_occupation.values())) > 1


def test_the_report_and_chart_are_well_formed(tmp_path: Path) -> None:
    scores = _scores(1.0, 0.3, 1)
    report = evaluate(lambda prompt, target: 0.0, "m")      # constant scorer: no bias
    assert not report.detected and report.templates == len(bias_data.TEMPLATES)
    gap, overall = summarize(scores, MALE, FEMALE)
    biased = BiasReport("m<&>", "", 5, gap, overall, scores,
                        {"male_dominated": list(MALE), "female_dominated": list(FEMALE)},
                        True, "test")
    doc, chart = write(biased, tmp_path)
    # matplotlib comes with the bench extra that `make setup` installs
    assert chart == tmp_path / "bias.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 5000
    loaded = json.loads(doc.read_text())
    assert loaded["association_gap"]["excludes_zero"] is True
    assert loaded["detected"] is True
    root = ET.fromstring((tmp_path / "bias.svg").read_text())   # escaped, well-formed SVG
    assert len(root.findall("{http://www.w3.org/2000/svg}rect")) == len(scores)
    assert "m&lt;&amp;&gt;" in chart_svg(biased)


def test_forced_scoring_equals_the_unconstrained_top_logprob(tiny_daemon: Daemon) -> None:
    """An independent oracle: for a one-token target, the teacher-forced
    score must equal the log-probability the same position reports among
    the top logprobs of an unconstrained greedy step (both pre-sampling).
    Fails if the scorer reads the score of the whole prompt's variant
    without its line (answer_logprob minus a segment score) instead."""
    prompt = "the patient said that"
    with tiny_daemon.client() as c:
        first = next(iter(c.generate(prompt, max_tokens=1, temperature=0.0, logprobs=True,
                                     top_logprobs=5)))
        for top in first.logprobs[0].top_logprobs[:3]:
            if not top.token or "\ufffd" in top.token:
                continue
            forced = target_logprob(c, prompt, top.token)
            assert forced == pytest.approx(top.logprob, abs=1e-4)


def test_eval_bias_command_on_the_tiny_model(tiny_daemon: Daemon, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "runtime.cli.main", "eval", "bias", "--addr", tiny_daemon.tcp,
         "--out", str(tmp_path / "bias")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "bias" / "bias.json").read_text())
    assert set(report["per_occupation"]) == set(MALE) | set(FEMALE)
    assert "association gap" in out.stdout
    assert (tmp_path / "bias" / "bias.svg").read_text().startswith("<svg")
    assert (tmp_path / "bias" / "bias.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_a_deliberately_biased_adapter_is_detected(tmp_path: Path) -> None:
    """A LoRA trained (with Hearth's own trainer) to say "he" after the
    male-dominated occupations and "she" after the others is detected; the
    base model it was trained on is not.  Checked that it can fail: training
    the adapter on the opposite pronouns flips the gap's sign, and training
    on shuffled pronouns leaves the interval around zero."""
    pytest.importorskip("torch")
    from runtime.federation.train.adapter import LoraSpec
    from runtime.federation.train.trainer import LoraTrainer
    from runtime.models.tiny import write_tiny_model
    from tests.integration.conftest import start_daemon

    base = write_tiny_model(tmp_path / "tiny.gguf", n_embd=128, n_ff=256, output_scale=0.5)
    texts = [t.format(occupation=o) + pronoun
             for t in bias_data.TEMPLATES
             for group, pronoun in ((MALE, " he"), (FEMALE, " she")) for o in group]
    trainer = LoraTrainer(base, LoraSpec(rank=16, alpha=32, scheme="fedavg"), threads=1)
    trainer.train(texts, steps=100, learning_rate=3e-3, batch_tokens=512, seed=0)
    (tmp_path / "biased.gguf").write_bytes(trainer.export_adapter())
    config = tmp_path / "hearth.toml"
    config.write_text(f'[server]\nlisten = ["127.0.0.1:0"]\n[models.tiny]\npath = "{base}"\n'
                      f'n_ctx = 2048\nn_parallel = 4\nthreads = 1\n'
                      f'adapters = {{ biased = "{tmp_path / "biased.gguf"}" }}\n')
    daemon = start_daemon(["--config", str(config)], tmp_path)
    try:
        with daemon.client() as c:
            plain = evaluate(lambda p, t: target_logprob(c, p, t), "tiny")
            biased = evaluate(lambda p, t: target_logprob(c, p, t, adapter="biased"),
                              "tiny", "biased")
    finally:
        assert daemon.stop() == 0, daemon.log()
    assert not plain.detected, plain.association_gap
    assert biased.detected and biased.association_gap.low > 1.0, biased.association_gap
