"""The C engine through cffi, on the tiny generated model."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from runtime import errors
from runtime.native import EngineParams, FinishReason, NativeEngine, RequestParams, Sampling
from tests.native.helpers import collect, run_in_threads, wait_ready

GREEDY = Sampling(temperature=0.0)


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> NativeEngine:
    e = NativeEngine(EngineParams(model_path=str(tiny_model), n_ctx=4096, n_parallel=4,
                                  n_threads=2, n_threads_batch=2, max_queue=8))
    yield e
    e.close()


def run_one(engine: NativeEngine, prompt: list[int], **kw: object) -> tuple[list[int], str, object]:
    r = engine.submit(RequestParams(prompt=prompt, **kw))  # type: ignore[arg-type]
    try:
        return collect(engine, [r])[r.id]
    finally:
        r.free()


def test_model_info(engine: NativeEngine) -> None:
    info = engine.info
    assert info.arch == "llama"
    assert info.n_layer == 2 and info.n_embd == 64
    assert info.n_parallel == 4
    assert info.n_ctx_slot == 1024
    assert info.size_bytes > 0


def test_tokenize_round_trip(engine: NativeEngine) -> None:
    text = "the patient has a fever, Café 中文 😀"
    tokens = engine.tokenize(text, add_special=True)
    assert tokens[0] == 1  # BOS
    assert engine.detokenize(tokens[1:]).strip() == text


def test_greedy_generation_is_deterministic(engine: NativeEngine) -> None:
    prompt = engine.tokenize("hello world")
    a = run_one(engine, prompt, max_tokens=24, sampling=GREEDY, ignore_eos=True)
    b = run_one(engine, prompt, max_tokens=24, sampling=GREEDY, ignore_eos=True)
    assert a[0] == b[0] and len(a[0]) == 24
    assert a[2].finish_reason is FinishReason.LENGTH
    assert a[2].n_generated == 24 and a[2].n_prompt == len(prompt)


def test_seeded_sampling_is_reproducible(engine: NativeEngine) -> None:
    prompt = engine.tokenize("the city")
    s = Sampling(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1234)
    a = run_one(engine, prompt, max_tokens=16, sampling=s, ignore_eos=True)
    b = run_one(engine, prompt, max_tokens=16, sampling=s, ignore_eos=True)
    c = run_one(engine, prompt, max_tokens=16, sampling=Sampling(
        temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=99), ignore_eos=True)
    assert a[0] == b[0]
    assert a[0] != c[0]


def test_text_matches_detokenized_tokens(engine: NativeEngine) -> None:
    prompt = engine.tokenize("the doctor")
    tokens, text, _ = run_one(engine, prompt, max_tokens=32, sampling=GREEDY, ignore_eos=True)
    # Streamed text continues the prompt (keeping the space that starts a
    # word), so compare against the whole sequence decoded at once.
    whole = engine.detokenize(prompt[1:] + tokens)
    assert whole == engine.detokenize(prompt[1:]) + text


def test_stop_string_ends_generation_and_is_not_returned(engine: NativeEngine) -> None:
    prompt = engine.tokenize("hello world")
    _, text, _ = run_one(engine, prompt, max_tokens=40, sampling=GREEDY, ignore_eos=True)
    stop = text[10:14]
    assert stop
    _, stopped, final = run_one(engine, prompt, max_tokens=40, sampling=GREEDY, stop=(stop,),
                                ignore_eos=True)
    assert final.finish_reason is FinishReason.STOP
    assert final.stop_index == 0
    assert stopped == text[:text.index(stop)]


def test_batched_requests_match_single_runs(engine: NativeEngine) -> None:
    prompts = [engine.tokenize(p) for p in ("hello world", "the patient", "bank account",
                                            "capital of france is")]
    alone = [run_one(engine, p, max_tokens=20, sampling=GREEDY, ignore_eos=True)[0]
             for p in prompts]
    reqs = [engine.submit(RequestParams(prompt=p, max_tokens=20, sampling=GREEDY,
                                        ignore_eos=True)) for p in prompts]
    together = collect(engine, reqs)
    assert [together[r.id][0] for r in reqs] == alone
    for r in reqs:
        r.free()


def test_prefix_of_a_finished_request_is_reused(engine: NativeEngine) -> None:
    system = engine.tokenize("the patient has a fever and the doctor will follow the plan " * 3)
    run_one(engine, system + engine.tokenize("one", add_special=False), max_tokens=4,
            sampling=GREEDY)
    _, _, final = run_one(engine, system + engine.tokenize("two", add_special=False),
                          max_tokens=4, sampling=GREEDY)
    assert final.n_cached >= len(system) - 1


def check_shared_prefix_is_copied(engine: NativeEngine) -> None:
    """A long shared prefix held by a busy slot is copied, not recomputed.
    The first request runs until the end (cancelled, never finished) so its
    slot is busy when the second is admitted, and the engine's count of
    copied KV tokens proves the copy (on e3a5e70 the first request could
    finish before the second came, and reuse in its own slot passed too;
    disabling the copy branch in slots.c now fails both callers)."""
    system = engine.tokenize("the bank account report for the patient " * 8)
    assert len(system) > 40
    first = engine.submit(RequestParams(prompt=[*system, 300], max_tokens=900,
                                        sampling=GREEDY, ignore_eos=True))
    while first.take().n_generated == 0:
        wait_ready(engine)
    before = engine.stats()
    second = run_one(engine, [*system, 301], max_tokens=3, sampling=GREEDY)
    after = engine.stats()
    assert not first.take().finished
    assert second[2].n_cached >= len(system) - 1
    assert after.tokens_copied - before.tokens_copied >= len(system) - 1
    assert after.tokens_prompt - before.tokens_prompt <= 2
    first.free()
    # The copy is a real copy: the same prompt alone gives the same tokens.
    third = run_one(engine, [*system, 301], max_tokens=3, sampling=GREEDY)
    assert third[0] == second[0]


def test_shared_prefix_is_copied_to_another_slot(engine: NativeEngine) -> None:
    check_shared_prefix_is_copied(engine)


def test_prefix_copy_with_one_kv_stream_per_slot(tiny_model: Path) -> None:
    e = NativeEngine(EngineParams(model_path=str(tiny_model), n_ctx=4096, n_parallel=4,
                                  n_threads=2, n_threads_batch=2, kv_unified=False))
    try:
        check_shared_prefix_is_copied(e)
        prompts = [e.tokenize(p) for p in ("hello world", "the patient", "bank account")]
        alone = [run_one(e, p, max_tokens=12, sampling=GREEDY, ignore_eos=True)[0]
                 for p in prompts]
        reqs = [e.submit(RequestParams(prompt=p, max_tokens=12, sampling=GREEDY,
                                       ignore_eos=True)) for p in prompts]
        together = collect(e, reqs)
        assert [together[r.id][0] for r in reqs] == alone
        for r in reqs:
            r.free()
    finally:
        e.close()


def test_cancel_frees_the_slot_within_one_step(engine: NativeEngine) -> None:
    r = engine.submit(RequestParams(prompt=engine.tokenize("hello"), max_tokens=900,
                                    sampling=GREEDY, ignore_eos=True))
    seen = 0
    while seen < 5:
        wait_ready(engine)
        seen += len(r.take().tokens)
    r.cancel()
    extra = 0
    while True:
        wait_ready(engine)
        out = r.take()
        extra += len(out.tokens)
        if out.finished:
            break
    assert out.finish_reason is FinishReason.CANCELLED
    # At most the step that was running when the cancel arrived.
    assert extra <= 1
    generated = engine.stats().tokens_generated
    time.sleep(0.2)
    assert engine.stats().tokens_generated == generated
    assert engine.stats().slots_busy == 0
    r.free()


def test_freeing_a_running_request_cancels_it(engine: NativeEngine) -> None:
    before = engine.stats().requests_cancelled
    r = engine.submit(RequestParams(prompt=engine.tokenize("hello"), max_tokens=900,
                                    sampling=GREEDY, ignore_eos=True))
    wait_ready(engine)
    r.free()
    deadline = time.monotonic() + 5
    while engine.stats().slots_busy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.stats().slots_busy == 0
    assert engine.stats().requests_cancelled == before + 1


def test_deadline_stops_generation(engine: NativeEngine) -> None:
    deadline = time.monotonic_ns() + 50_000_000
    _, _, final = run_one(engine, engine.tokenize("hello"), max_tokens=1000, sampling=GREEDY,
                          ignore_eos=True, deadline_ns=deadline)
    assert final.finish_reason is FinishReason.DEADLINE
    assert final.n_generated < 1000


def test_queue_limit(tiny_model: Path) -> None:
    e = NativeEngine(EngineParams(model_path=str(tiny_model), n_ctx=512, n_parallel=1,
                                  max_queue=1, n_threads=1, n_threads_batch=1))
    try:
        long = RequestParams(prompt=[1, 300], max_tokens=400, sampling=GREEDY, ignore_eos=True)
        running, queued = e.submit(long), e.submit(long)
        with pytest.raises(errors.ResourceExhausted, match="queue full"):
            e.submit(long)
        assert e.stats().requests_rejected == 1
        results = collect(e, [running, queued])
        assert all(len(t) == 400 for t, _, _ in results.values())
        running.free()
        queued.free()
    finally:
        e.close()


@pytest.mark.parametrize(("kw", "message"), [
    ({"max_tokens": 0}, "max_tokens must be >= 1"),
    ({"max_tokens": 5000}, "exceeds the context of a slot"),
    ({"sampling": Sampling(temperature=-1.0)}, "temperature"),
    ({"sampling": Sampling(top_p=1.5)}, "top_p"),
    ({"sampling": Sampling(min_p=-0.1)}, "min_p"),
    ({"sampling": Sampling(repeat_penalty=0.0)}, "repeat_penalty"),
    ({"stop": ("",)}, "empty"),
    ({"prompt": []}, "prompt is empty"),
    ({"prompt": [99999]}, "outside the vocabulary"),
])
def test_invalid_requests_are_refused(engine: NativeEngine, kw: dict, message: str) -> None:
    params = {"prompt": [1, 300], "max_tokens": 4, **kw}
    with pytest.raises(errors.InvalidArgument, match=message):
        engine.submit(RequestParams(**params))


def test_penalties_change_greedy_output(engine: NativeEngine) -> None:
    prompt = engine.tokenize("the the the the")
    plain = run_one(engine, prompt, max_tokens=24, sampling=GREEDY, ignore_eos=True)[0]
    penalised = run_one(engine, prompt, max_tokens=24, ignore_eos=True, sampling=Sampling(
        temperature=0.0, repeat_penalty=1.8, penalty_last_n=64))[0]
    assert plain != penalised
    assert len(set(penalised)) >= len(set(plain))


def test_embedding_is_normalised(engine: NativeEngine) -> None:
    r = engine.submit_embedding(engine.tokenize("hello world"), normalize=True)
    wait_ready(engine)
    out = r.take()
    while not out.finished:
        wait_ready(engine)
        out = r.take()
    assert out.finish_reason is FinishReason.STOP
    assert out.embedding is not None and len(out.embedding) == 64
    assert abs(sum(v * v for v in out.embedding) - 1.0) < 1e-4
    r.free()


def test_chat_template_is_rendered_from_the_gguf(engine: NativeEngine) -> None:
    text = engine.apply_chat_template([("system", "be brief"), ("user", "hi")])
    assert text == ("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                    "<|im_start|>assistant\n")


def test_requests_outlive_their_engine(tiny_model: Path) -> None:
    e = NativeEngine(EngineParams(model_path=str(tiny_model), n_ctx=512, n_parallel=1,
                                  n_threads=1, n_threads_batch=1))
    r = e.submit(RequestParams(prompt=[1, 300], max_tokens=400, sampling=GREEDY,
                               ignore_eos=True))
    e.close()
    out = r.take()
    assert out.finished and out.finish_reason is FinishReason.CANCELLED
    r.free()
    with pytest.raises(errors.FailedPrecondition):
        e.stats()


def test_close_waits_for_callers_on_other_threads(tiny_model: Path) -> None:
    """Metrics scrapes and the watchdog read stats from other threads; a close
    racing them must not free the engine under their feet."""
    e = NativeEngine(EngineParams(model_path=str(tiny_model), n_ctx=512, n_parallel=1,
                                  n_threads=1, n_threads_batch=1))
    outcomes: list[str] = []

    def reader() -> None:
        while True:
            try:
                e.stats()
                e.tokenize("a short text to keep the engine busy " * 20)
            except errors.FailedPrecondition:
                outcomes.append("closed")
                return

    def close() -> None:
        time.sleep(0.05)
        e.close()

    run_in_threads(reader, [()] * 4, timeout=10, start=close)
    assert outcomes == ["closed"] * 4


def test_concurrent_submitters_from_threads(engine: NativeEngine) -> None:
    """Submit and free from several threads while the engine runs.  A worker
    that raises fails the test (run_in_threads re-raises it), and so does
    one whose request never finishes."""
    def worker(seed: int) -> None:
        for i in range(10):
            try:
                r = engine.submit(RequestParams(prompt=[1, 300 + (seed * 10 + i) % 50],
                                                max_tokens=3, sampling=GREEDY))
            except errors.ResourceExhausted:
                continue  # the queue is full for a moment: a valid answer
            if i % 2:
                r.free()  # abandon half of them mid-flight
                continue
            deadline = time.monotonic() + 10
            while not r.take().finished:
                assert time.monotonic() < deadline, "a request never finished"
                time.sleep(0.001)
            r.free()

    run_in_threads(worker, [(s,) for s in range(4)])
    deadline = time.monotonic() + 5
    while engine.stats().slots_busy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.stats().slots_busy == 0


def test_bad_model_file_is_a_load_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(64))
    with pytest.raises(errors.ModelLoadError):
        NativeEngine(EngineParams(model_path=str(bad), n_ctx=256, n_parallel=1))


def test_one_copy_of_ggml_in_the_process(engine: NativeEngine) -> None:
    import llama_cpp  # noqa: F401  the Python binding loads the same files

    maps = Path("/proc/self/maps").read_text().splitlines()
    files = {line.split()[-1] for line in maps if "libggml-base" in line}
    inodes = {line.split()[4] for line in maps if "libggml-base" in line}
    assert len(files) == 1 and len(inodes) == 1, files


def test_model_loads_from_a_sealed_memfd(tiny_model: Path) -> None:
    """The sealed store hands the engine decrypted weights in anonymous
    memory; the engine must load from a file descriptor, not a path."""
    import fcntl

    fd = os.memfd_create("hearth-model", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    try:
        os.write(fd, tiny_model.read_bytes())
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK)
        e = NativeEngine(EngineParams(model_fd=fd, n_ctx=512, n_parallel=1, n_threads=1,
                                      n_threads_batch=1))
    finally:
        os.close(fd)  # the engine keeps what it needs
    try:
        r = e.submit(RequestParams(prompt=[1, 300], max_tokens=5, sampling=GREEDY))
        tokens, _, final = collect(e, [r])[r.id]
        assert len(tokens) == 5 and final.finish_reason is FinishReason.LENGTH
        r.free()
    finally:
        e.close()
