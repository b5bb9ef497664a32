"""Distilled early-exit drafts (runtime/distill) on the tiny model: the
draft writer, the KL loss, training, the exported draft in the engine, and
the command line's refusals."""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from runtime import errors
from runtime.cli.main import main, parser
from runtime.distill.early_exit import early_exit_draft
from runtime.distill.job import tokenize_texts
from runtime.models.tiny import write_tiny_model
from runtime.native import EngineParams, NativeEngine, RequestParams, Sampling
from tests.native.helpers import collect

torch = pytest.importorskip("torch")

from runtime.distill.trainer import DistillTrainer  # noqa: E402

N_LAYER = 4


def note(i: int) -> str:
    return f"the patient in bed {i} reports mild pain and the doctor said hello world note {i}"


# Held-out notes share the training notes' form, not their numbers: what a
# few steps on a random tiny model can learn and carry over.
TEXTS = [note(i) for i in range(24)]
HELDOUT = [note(i) for i in (31, 47, 58)]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A small output scale: predictions a few layers change visibly.
    return write_tiny_model(tmp_path_factory.mktemp("distill") / "tiny4.gguf",
                            n_layer=N_LAYER, output_scale=0.5)


def _blocks(path: Path) -> tuple[int, set[int]]:
    reader = gguf.GGUFReader(str(path))
    count = int(reader.fields["llama.block_count"].contents())
    blocks = {int(t.name.split(".")[1]) for t in reader.tensors if t.name.startswith("blk.")}
    return count, blocks


def test_early_exit_writer_keeps_the_first_k_blocks(model: Path, tmp_path: Path) -> None:
    """The draft says K blocks and holds exactly blocks 0..K-1, the head and
    norm byte for byte (fails if the writer keeps every block, or leaves
    block_count at the model's)."""
    draft = early_exit_draft(model, tmp_path / "d.gguf", 2)
    assert _blocks(draft) == (2, {0, 1})
    src = {t.name: bytes(t.data) for t in gguf.GGUFReader(str(model)).tensors}
    for t in gguf.GGUFReader(str(draft)).tensors:
        assert bytes(t.data) == src[t.name], t.name


def test_kl_is_zero_for_the_whole_model_and_positive_for_a_cut(model: Path) -> None:
    """K = all blocks with the zero-initialised LoRA is the teacher itself:
    KL 0 to float rounding; K = 1 differs (fails if the student ran the
    full depth or the loss compared the wrong rows)."""
    tokens = tokenize_texts(str(model), HELDOUT, 1)
    whole = DistillTrainer(model, N_LAYER, threads=1)
    assert abs(whole.kl(tokens)) < 1e-5
    cut = DistillTrainer(model, 1, threads=1)
    assert cut.kl(tokens) > 1e-2


def test_distillation_lowers_the_heldout_kl(model: Path) -> None:
    """A few steps on the training texts lower KL(teacher || draft) on
    texts not trained on (fails with the gradient cut: with `cut.grad` not
    passed back through the blocks, B stays 0 and the KL does not move)."""
    trainer = DistillTrainer(model, 2, rank=4, threads=1)
    heldout = tokenize_texts(str(model), HELDOUT, 1)
    before = trainer.kl(heldout)
    trainer.train(tokenize_texts(str(model), TEXTS, 1), steps=12, learning_rate=3e-3,
                  batch_tokens=64)
    after = trainer.kl(heldout)
    assert after < 0.85 * before, (before, after)


def _greedy(target: Path, draft: Path | None) -> tuple[list[list[int]], int]:
    e = NativeEngine(EngineParams(model_path=str(target), n_ctx=2048, n_parallel=2,
                                  n_threads=1, n_threads_batch=1, n_draft=4,
                                  draft_path=str(draft) if draft else None))
    try:
        reqs = [e.submit(RequestParams(prompt=e.tokenize(p), max_tokens=48, ignore_eos=True,
                                       sampling=Sampling(temperature=0.0))) for p in HELDOUT]
        try:
            res = collect(e, reqs)
        finally:
            for r in reqs:
                r.free()
        return [res[r.id][0] for r in reqs], sum(res[r.id][2].n_drafted for r in reqs)
    finally:
        e.close()


@pytest.mark.parametrize("merged_type", ["q8_0", "f16"])
def test_exported_draft_speculates_with_the_exact_greedy_text(
        model: Path, tmp_path: Path, merged_type: str) -> None:
    """The distilled draft (LoRA merged, K blocks) loads as the engine's
    draft, proposes tokens, and greedy output equals the plain run's.  The
    merged tensors differ from the originals and the draft holds them, to
    the stored type's rounding (fails if the export wrote the original
    tensors: checked by passing no replacements)."""
    trainer = DistillTrainer(model, 2, rank=4, threads=1)
    trainer.train(tokenize_texts(str(model), TEXTS, 1), steps=3, learning_rate=1e-2,
                  batch_tokens=64)
    merged = trainer.merged_weights()
    base = trainer.weights.blocks[0]["attn_q"].numpy()
    assert not np.allclose(merged["blk.0.attn_q.weight"], base)
    draft = early_exit_draft(model, tmp_path / "draft.gguf", 2, merged, merged_type)
    assert _blocks(draft) == (2, {0, 1})
    stored = next(t for t in gguf.GGUFReader(str(draft)).tensors
                  if t.name == "blk.0.attn_q.weight")
    values = gguf.quants.dequantize(stored.data, stored.tensor_type).reshape(base.shape)
    want = merged["blk.0.attn_q.weight"]
    assert np.abs(values - want).max() < 0.02 * np.abs(want).max()
    plain, _ = _greedy(model, None)
    spec, drafted = _greedy(model, draft)
    assert drafted > 0
    assert spec == plain


def _store_args(tmp_path: Path) -> list[str]:
    args = ["--state-dir", str(tmp_path / "state"), "--key-file", str(tmp_path / "key")]
    assert main(["keys", "init", *args]) == 0
    return args


@pytest.mark.parametrize("layers", ["0", str(N_LAYER), "-1"])
def test_cli_refuses_a_draft_depth_outside_the_model(model: Path, tmp_path: Path,
                                                     layers: str) -> None:
    """K < 1 or K >= the model's blocks: InvalidArgument before any work
    (fails if the check allowed K == n_layer, which the trainer accepts)."""
    args = parser().parse_args(["distill", *_store_args(tmp_path), "--model", str(model),
                                "--draft-layers", layers, "--data", "notes",
                                "--out", str(tmp_path / "d.gguf")])
    with pytest.raises(errors.InvalidArgument, match="draft layers"):
        args.func(args)


def test_cli_unknown_data_set_is_not_found(model: Path, tmp_path: Path) -> None:
    """A data set the store does not hold: NotFound naming `hearth data add`
    (and nothing is written)."""
    args = parser().parse_args(["distill", *_store_args(tmp_path), "--model", str(model),
                                "--draft-layers", "2", "--data", "nosuch",
                                "--out", str(tmp_path / "d.gguf")])
    with pytest.raises(errors.NotFound, match="hearth data add"):
        args.func(args)
    assert not (tmp_path / "d.gguf").exists()


def test_cli_distils_into_the_store(model: Path, tmp_path: Path) -> None:
    """The whole command: sealed notes in, a sealed draft model out that
    the store opens as a GGUF model of K blocks."""
    from runtime.storage.keys import key_from_file
    from runtime.storage.store import Kind, SealedStore

    args = _store_args(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("\n".join(TEXTS) + "\n")
    assert main(["data", "add", "notes", str(notes), *args]) == 0
    assert main(["distill", *args, "--model", str(model), "--draft-layers", "2",
                 "--data", "notes", "--steps", "2", "--rank", "2", "--threads", "1",
                 "--store", "tiny-draft"]) == 0
    store = SealedStore.open(tmp_path / "state", key_from_file(str(tmp_path / "key")))
    try:
        data = store.read_bytes(Kind.MODEL, "tiny-draft")
    finally:
        store.close()
    out = tmp_path / "back.gguf"
    out.write_bytes(data)
    assert _blocks(out) == (2, {0, 1})


def test_exported_draft_computes_what_the_student_computed(tmp_path: Path) -> None:
    """The engine running the exported draft (f32 merge) gives the
    student's log-probabilities, on the tiny gemma3 model (sliding window,
    per-layer RoPE bases, soft-cap), as the trainer's own engine agreement
    test measures (1e-3: ggml's GELU table); the LoRA's effect is far
    larger (fails if the merge used A B, the wrong scale, or the draft kept
    other blocks' settings)."""
    from tests.federation.train.conftest import engine_generate, logprob_gaps
    from tests.federation.train.tiny_gemma import write_tiny_gemma

    model = write_tiny_gemma(tmp_path / "tiny-gemma.gguf")
    trainer = DistillTrainer(model, 2, rank=4, threads=1)
    rng = np.random.default_rng(5)
    with torch.no_grad():
        for b in trainer.b:
            b.copy_(torch.from_numpy(rng.standard_normal(tuple(b.shape)).astype(np.float32))
                    * 0.05)
    draft = early_exit_draft(model, tmp_path / "draft.gguf", 2, trainer.merged_weights(),
                             "f32")
    prompt = "the patient had a fever and the doctor went home to see the nurse at the clinic"
    got = engine_generate(draft, prompt, adapter=None)
    gaps = logprob_gaps(got, trainer.student_logprobs(got.prompt + got.tokens))
    assert gaps.max() <= 2.5e-3
    with torch.no_grad():
        for b in trainer.b:
            b.zero_()
    changes = logprob_gaps(got, trainer.student_logprobs(got.prompt + got.tokens))
    assert changes.max() > 0.5
