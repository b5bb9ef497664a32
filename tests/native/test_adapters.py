"""LoRA adapters in the engine: per-request, mixed in one engine, swapped
under load, unloaded safely, bad files refused."""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import errors
from runtime.models.tiny import write_tiny_lora, write_tiny_model
from runtime.native import EngineParams, NativeEngine, NativeRequest, RequestParams, Sampling
from tests.native.helpers import collect, wait_ready

GREEDY = Sampling(temperature=0.0)


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_lora(tmp_path_factory.mktemp("lora") / "a.gguf", seed=1)


@pytest.fixture
def engine(tiny_model: Path) -> Iterator[NativeEngine]:
    e = NativeEngine(EngineParams(model_path=str(tiny_model), n_ctx=4096, n_parallel=4,
                                  n_threads=2, n_threads_batch=2))
    yield e
    e.close()


def greedy(e: NativeEngine, prompt: str, n: int = 24, **kw: object) -> list[int]:
    r = e.submit(RequestParams(prompt=e.tokenize(prompt), max_tokens=n, sampling=GREEDY,
                               ignore_eos=True, **kw))  # type: ignore[arg-type]
    try:
        return collect(e, [r])[r.id][0]
    finally:
        r.free()


def test_an_adapter_changes_the_output_only_where_asked(engine: NativeEngine,
                                                        lora: Path) -> None:
    base = greedy(engine, "the patient")
    aid = engine.load_adapter(str(lora))
    assert aid > 0 and engine.adapter_count() == 1
    with_lora = greedy(engine, "the patient", adapter=aid)
    assert with_lora != base
    assert greedy(engine, "the patient") == base                 # others unaffected
    assert greedy(engine, "the patient", adapter=aid) == with_lora
    assert greedy(engine, "the patient", adapter=aid, adapter_scale=0.0) == base
    assert greedy(engine, "the patient", adapter=aid, adapter_scale=0.5) != with_lora


def test_mixed_adapters_in_one_engine_match_running_alone(engine: NativeEngine, lora: Path,
                                                          tmp_path: Path) -> None:
    """The same prompt with and without an adapter, at the same time: a
    prefix cached under one adapter must never serve the other."""
    other = write_tiny_lora(tmp_path / "b.gguf", seed=2)
    ids = [0, engine.load_adapter(str(lora)), engine.load_adapter(str(other))]
    alone = {i: greedy(engine, "hello world", 40, adapter=i) for i in ids}
    assert len({tuple(v) for v in alone.values()}) == 3
    reqs = [(ids[k % 3], engine.submit(RequestParams(
        prompt=engine.tokenize("hello world"), max_tokens=40, sampling=GREEDY,
        ignore_eos=True, adapter=ids[k % 3]))) for k in range(9)]
    try:
        res = collect(engine, [r for _, r in reqs])
        for aid, r in reqs:
            assert res[r.id][0] == alone[aid]
    finally:
        for _, r in reqs:
            r.free()


def run_until_each_has_output(engine: NativeEngine, requests: list[NativeRequest],
                              acc: dict[int, list[int]]) -> None:
    """Drives the engine until every request has produced a token (so all
    are running, none merely queued) and none has finished."""
    by_id = {r.id: r for r in requests}
    while not all(acc[r.id] for r in requests):
        for rid in wait_ready(engine):
            if rid in by_id:
                out = by_id[rid].take()
                assert not out.finished, "a request finished before the swap"
                acc[rid].extend(out.tokens)


def test_swap_under_load_and_unload_while_in_use(engine: NativeEngine, lora: Path,
                                                 tmp_path: Path, tiny_model: Path) -> None:
    """Three requests are proven running on v1 (each has output, none has
    finished) when v2 is loaded and v1 unloaded; they end with exactly v1's
    output, and requests after the swap get v2's.  Checked that it fails
    when unloading frees an adapter still in use (adapters.c's
    collect_retired without `a->users == 0`)."""
    v1 = engine.load_adapter(str(lora))
    expected_v1 = greedy(engine, "bank account", 300, adapter=v1)
    running = [engine.submit(RequestParams(prompt=engine.tokenize("bank account"),
                                           max_tokens=300, sampling=GREEDY, ignore_eos=True,
                                           adapter=v1)) for _ in range(3)]
    acc: dict[int, list[int]] = {r.id: [] for r in running}
    try:
        run_until_each_has_output(engine, running, acc)
        assert all(0 < len(acc[r.id]) < 300 for r in running)
        # A new version arrives and the old one is retired while they run.
        v2_file = write_tiny_lora(tmp_path / "v2.gguf", seed=5)
        v2 = engine.load_adapter(str(v2_file))
        engine.unload_adapter(v1)
        with pytest.raises(errors.NotFound, match=f"no adapter with id {v1}"):
            engine.submit(RequestParams(prompt=[1, 2], max_tokens=2, adapter=v1))
        res = collect(engine, running)
        for r in running:
            assert acc[r.id] + res[r.id][0] == expected_v1
            assert res[r.id][2].finish_reason.name == "LENGTH"
    finally:
        for r in running:
            r.free()
    after = greedy(engine, "bank account", 300, adapter=v2)
    assert after != expected_v1
    greedy(engine, "x", 1)     # a step after the last user: v1 is freed
    assert engine.adapter_count() == 1
    with pytest.raises(errors.NotFound):
        engine.unload_adapter(v1)
    # The new version is v2 itself: a fresh engine with only v2 agrees.
    fresh = NativeEngine(EngineParams(model_path=str(tiny_model), n_ctx=1024,
                                      n_parallel=1, n_threads=2, n_threads_batch=2))
    try:
        assert greedy(fresh, "bank account", 300, adapter=fresh.load_adapter(str(v2_file))) \
            == after
    finally:
        fresh.close()


def test_concurrent_loads_while_decoding(engine: NativeEngine, lora: Path) -> None:
    stop = threading.Event()
    ids: list[int] = []

    def churn() -> None:
        while not stop.is_set() and len(ids) < 20:
            aid = engine.load_adapter(str(lora))
            ids.append(aid)
            engine.unload_adapter(aid)

    t = threading.Thread(target=churn, daemon=True)
    t.start()
    try:
        for _ in range(5):
            assert len(greedy(engine, "the clinic", 60)) == 60
    finally:
        stop.set()
        t.join(timeout=60)
    assert ids and not t.is_alive()


def test_bad_adapter_files_are_refused(engine: NativeEngine, tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + os.urandom(200))
    with pytest.raises(errors.ModelLoadError):
        engine.load_adapter(str(junk))
    # A LoRA for a model of another shape (n_embd 32): llama.cpp refuses it.
    wrong = write_tiny_lora(tmp_path / "wrong.gguf", n_embd=32, n_ff=64)
    with pytest.raises(errors.ModelLoadError, match="adapter"):
        engine.load_adapter(str(wrong))
    # A model file is not an adapter.
    model = write_tiny_model(tmp_path / "m.gguf", n_layer=1)
    with pytest.raises(errors.ModelLoadError):
        engine.load_adapter(str(model))
    with pytest.raises(errors.InvalidArgument, match="adapter_scale"):
        engine.submit(RequestParams(prompt=[1, 2], max_tokens=2, adapter_scale=float("nan")))
    with pytest.raises(errors.NotFound):
        engine.submit(RequestParams(prompt=[1, 2], max_tokens=2, adapter=99))
    assert engine.adapter_count() == 0
    assert len(greedy(engine, "still serving", 4)) == 4


def test_an_adapter_loads_from_a_file_descriptor(engine: NativeEngine, lora: Path) -> None:
    fd = os.open(lora, os.O_RDONLY)
    try:
        aid = engine.load_adapter(fd=fd)
    finally:
        os.close(fd)
    assert greedy(engine, "the patient", adapter=aid) == greedy(
        engine, "the patient", adapter=engine.load_adapter(str(lora)))
