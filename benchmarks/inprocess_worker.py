"""llama-cpp-python in process, one stream: run in its own process by the benchmark.

    python -m benchmarks.inprocess_worker MODEL THREADS N_CTX MAX_TOKENS [--flash-attn on|off]
        < prompt

Without --flash-attn, Llama's own default (off) applies: the peer as users run it.

Prints one JSON line, a StreamRecord, on stdout (its times on this process's clock).
`create_completion` has no ignore_eos, so the record holds the tokens actually produced.
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import Any, cast

from benchmarks.load import StreamRecord


def main(argv: list[str]) -> int:
    model, threads, n_ctx, max_tokens = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    options: dict[str, Any] = {}
    if argv[4:5] == ["--flash-attn"]:
        options["flash_attn"] = {"on": True, "off": False}[argv[5]]
    prompt = sys.stdin.read()
    from llama_cpp import Llama

    llm = Llama(model_path=model, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                verbose=False, **options)
    for _ in llm.create_completion("Warm-up request: say hello.", max_tokens=8,
                                   temperature=0, stream=True):
        pass
    n_prompt = len(llm.tokenize(prompt.encode()))
    rec = StreamRecord(sent=time.perf_counter())
    stream = cast(Iterator[dict[str, Any]],
                  llm.create_completion(prompt, max_tokens=max_tokens, temperature=0,
                                        stream=True))
    for chunk in stream:
        now = time.perf_counter()
        choice = chunk["choices"][0]
        if choice["text"]:
            rec.arrivals.append((now, 1))
        if choice.get("finish_reason"):
            rec.finish = str(choice["finish_reason"])
    rec.end = time.perf_counter()
    # every generated token but the last is evaluated; an end-of-generation token is not
    # generated output, and it ends the loop before evaluation, like max_tokens does
    evaluated = llm.n_tokens - n_prompt
    rec.tokens = max_tokens if rec.finish == "length" else evaluated
    llm.close()
    print(json.dumps(rec.to_json()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
