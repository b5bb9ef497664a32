"""The workload: distinct prompts, concurrent streaming clients, and the figures per N.

Every client records, per stream, when the request was sent and when each piece of
output arrived with how many tokens it carried.  Inter-token latency treats a chunk of k
tokens as k arrivals at the same instant: the gap since the previous arrival is counted
once, then k-1 gaps of zero.  The first token's gap is the TTFT, not an ITL sample.
"""
from __future__ import annotations

import asyncio
import dataclasses
import http.client
import itertools
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

STREAM_TIMEOUT_S = 900.0

_OPENERS = ["Write a short note about", "Describe in plain words", "Tell a story about",
            "Explain to a new colleague", "List a few facts about", "Summarise what you know of"]
_ADJECTIVES = ["quiet", "ancient", "busy", "frozen", "golden", "narrow", "crowded", "distant",
               "bright", "muddy", "hidden", "gentle", "noisy", "empty", "wooden", "salty"]
_NOUNS = ["river", "market", "lighthouse", "library", "orchard", "harbour", "bridge", "forest",
          "railway", "kitchen", "village", "mountain", "garden", "workshop", "island", "tower"]
_VERBS = ["carried", "watched", "repaired", "painted", "counted", "followed", "collected",
          "measured", "visited", "described", "crossed", "opened", "remembered", "shared"]
_PEOPLE = ["the baker", "a young pilot", "two engineers", "the old fisherman", "my neighbour",
           "a group of students", "the night guard", "a travelling musician", "the mayor"]
_TAILS = ["before the rain started", "during the long winter", "after the market closed",
          "on the first day of spring", "while everyone else was asleep", "for the last time"]


def _sentence(rng: random.Random) -> str:
    return (f"{rng.choice(_PEOPLE).capitalize()} {rng.choice(_VERBS)} the "
            f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} {rng.choice(_TAILS)}.")


def make_prompts(n: int, count_tokens: Callable[[str], int], lo: int = 20, hi: int = 60,
                 rep: int = 0) -> list[str]:
    """n distinct, deterministic prompts of lo..hi tokens each, distinct across n and
    repetitions too (each starts with "Request n.i" or "Request n.i/rep"), so no server can
    reuse another level's prompt cache."""
    prompts = []
    for i in range(n):
        rng = random.Random(n * 1000 + i + rep * 1_000_003)
        target = rng.randint(lo + 4, hi - 6)
        label = f"{n}.{i}" if rep == 0 else f"{n}.{i}/{rep}"
        text = (f"Request {label}: {rng.choice(_OPENERS)} the {rng.choice(_ADJECTIVES)} "
                f"{rng.choice(_NOUNS)}.")
        words = iter(" ".join(_sentence(rng) for _ in range(12)).split())
        while count_tokens(text) < target:
            text += " " + next(words)
        while count_tokens(text) > hi:
            text = text.rsplit(" ", 1)[0]
        prompts.append(text)
    return prompts


@dataclass
class StreamRecord:
    """One streamed request, times in seconds on the client's monotonic clock."""

    sent: float = 0.0
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (time, tokens in chunk)
    tokens: int | None = None  # the peer's own count of generated tokens, when it gives one
    end: float = 0.0
    finish: str = ""
    error: str | None = None
    server_ttft: float | None = None  # the peer's own TTFT, when it reports one

    @property
    def generated(self) -> int:
        return self.tokens if self.tokens is not None else sum(k for _, k in self.arrivals)

    def to_json(self) -> dict[str, Any]:
        return {"sent": self.sent, "arrivals": self.arrivals, "tokens": self.tokens,
                "end": self.end, "finish": self.finish, "error": self.error,
                "server_ttft": self.server_ttft}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StreamRecord:
        return cls(sent=d["sent"], arrivals=[(t, k) for t, k in d["arrivals"]],
                   tokens=d["tokens"], end=d["end"], finish=d["finish"], error=d["error"],
                   server_ttft=d.get("server_ttft"))


@dataclass
class LevelResult:
    """The figures of one peer at one concurrency N."""

    n: int
    agg_tok_s: float | None
    decode_tok_s: float | None = None  # while every stream decodes (decode_rate)
    wall_s: float | None = None
    generated_tokens: int | None = None
    ttft_p50_s: float | None = None
    ttft_p99_s: float | None = None
    itl_p50_s: float | None = None
    itl_p99_s: float | None = None
    completed: int | None = None
    streams: int | None = None
    peak_rss_mb: float | None = None
    finish_reasons: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def inter_token_gaps(arrivals: list[tuple[float, int]]) -> list[float]:
    """One stream's inter-token latencies: a chunk of k tokens is k arrivals at one
    instant, so it gives the gap since the previous arrival once, then k-1 zeros. The
    first token's gap is the TTFT, not an ITL sample; chunks without tokens are not
    arrivals."""
    arrivals = [(t, k) for t, k in arrivals if k > 0]
    if not arrivals:
        return []
    gaps = [0.0] * (arrivals[0][1] - 1)
    for (prev, _), (t, k) in itertools.pairwise(arrivals):
        gaps.append(t - prev)
        gaps += [0.0] * (k - 1)
    return gaps


def decode_rate(records: list[StreamRecord]) -> float | None:
    """Generated tokens/s while all N streams decode at once: from the moment the last
    stream got its first token to the moment the first stream got its last one, the
    tokens that arrived in between over that time.  Prompt processing and the streams'
    ragged ends fall outside, so this is the figure to set beside llama-batched-bench's
    S_TG (N sequences decoding together).  None if any stream has fewer than two
    arrivals or the window is empty."""
    streams = [[(t, k) for t, k in r.arrivals if k > 0] for r in records]
    if not streams or any(len(a) < 2 for a in streams):
        return None
    start = max(a[0][0] for a in streams)
    end = min(a[-1][0] for a in streams)
    if end <= start:
        return None
    tokens = sum(k for a in streams for t, k in a if start < t <= end)
    return tokens / (end - start)


def summarize(n: int, records: list[StreamRecord], max_tokens: int) -> LevelResult:
    """The figures of one run of N streams (see the module docstring for the counting)."""
    ttfts, itls = [], []
    for r in records:
        first = next((t for t, k in r.arrivals if k > 0), None)
        if first is None:
            continue
        ttfts.append(first - r.sent)
        itls += inter_token_gaps(r.arrivals)
    total = sum(r.generated for r in records)
    wall = (max(r.end for r in records) - min(r.sent for r in records)) if records else 0.0
    reasons: dict[str, int] = {}
    for r in records:
        reasons[r.finish or "none"] = reasons.get(r.finish or "none", 0) + 1
    return LevelResult(
        n=n, agg_tok_s=total / wall if wall > 0 else None, decode_tok_s=decode_rate(records),
        wall_s=wall, generated_tokens=total,
        ttft_p50_s=_pct(ttfts, 50), ttft_p99_s=_pct(ttfts, 99),
        itl_p50_s=_pct(itls, 50), itl_p99_s=_pct(itls, 99),
        completed=sum(1 for r in records if r.error is None and r.generated >= max_tokens),
        streams=len(records), finish_reasons=reasons,
        errors=sorted({r.error for r in records if r.error}))


def median_run(runs: list[LevelResult]) -> LevelResult:
    """The repetition with the median throughput (the lower middle one of an even count),
    its figures kept together; `extra` lists every repetition's throughput, TTFT p50 and
    completed streams, and peak RSS is the highest of any repetition."""
    if not runs:
        raise ValueError("no runs to take the median of")
    ordered = sorted(runs, key=lambda lv: lv.agg_tok_s if lv.agg_tok_s is not None else -1.0)
    chosen = dataclasses.replace(ordered[(len(ordered) - 1) // 2])
    chosen.extra = {**chosen.extra, "repetitions": len(runs),
                    "runs_agg_tok_s": [lv.agg_tok_s for lv in runs],
                    "runs_ttft_p50_s": [lv.ttft_p50_s for lv in runs],
                    "runs_completed": [lv.completed for lv in runs]}
    peaks = [lv.peak_rss_mb for lv in runs if lv.peak_rss_mb is not None]
    chosen.peak_rss_mb = max(peaks) if peaks else None
    return chosen


# -- HTTP server-sent events (llama-server, llama-cpp-python's server) ----------------------

@dataclass(frozen=True)
class SseApi:
    """How one HTTP peer is asked for a completion and how its events are read."""

    path: str
    body: Callable[[str, int], dict[str, Any]]
    # event -> (tokens in it, peer's total when final else None, finish reason or "")
    parse: Callable[[dict[str, Any]], tuple[int, int | None, str]]


def _llama_server_event(ev: dict[str, Any]) -> tuple[int, int | None, str]:
    k = len(ev["tokens"]) if "tokens" in ev else int(bool(ev.get("content")))
    if not ev.get("stop"):
        return k, None, ""
    total = ev.get("timings", {}).get("predicted_n", ev.get("tokens_predicted"))
    return k, total, str(ev.get("stop_type", "stop"))


LLAMA_SERVER = SseApi(
    path="/completion",
    body=lambda prompt, n: {"prompt": prompt, "n_predict": n, "temperature": 0,
                            "stream": True, "ignore_eos": True, "cache_prompt": True,
                            "return_tokens": True},
    parse=_llama_server_event)


def _openai_event(ev: dict[str, Any]) -> tuple[int, int | None, str]:
    choice = (ev.get("choices") or [{}])[0]
    return int(bool(choice.get("text"))), None, str(choice.get("finish_reason") or "")


# llama-cpp-python's server has no ignore_eos; each non-empty chunk is one token
OPENAI_COMPLETIONS = SseApi(
    path="/v1/completions",
    body=lambda prompt, n: {"prompt": prompt, "max_tokens": n, "temperature": 0,
                            "stream": True},
    parse=_openai_event)


def _sse_data(resp: http.client.HTTPResponse) -> Iterator[str]:
    for raw in resp:
        line = raw.decode("utf-8", "replace").strip()
        if line.startswith("data:"):
            yield line[5:].strip()


def _sse_stream(host: str, port: int, api: SseApi, prompt: str, max_tokens: int,
                rec: StreamRecord) -> None:
    body = json.dumps(api.body(prompt, max_tokens))
    conn = http.client.HTTPConnection(host, port, timeout=STREAM_TIMEOUT_S)
    try:
        rec.sent = time.perf_counter()
        conn.request("POST", api.path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            rec.error = f"HTTP {resp.status}: {resp.read()[:200]!r}"
            return
        for data in _sse_data(resp):
            now = time.perf_counter()
            if data == "[DONE]":
                break
            k, total, finish = api.parse(json.loads(data))
            if k:
                rec.arrivals.append((now, k))
            if finish:
                rec.finish = finish
            if total is not None:
                rec.tokens = total
                break
        else:
            # the connection closed before the stream's last event: a server that died
            rec.error = "the stream ended before its final event"
    except (OSError, http.client.HTTPException, ValueError) as exc:
        rec.error = f"{type(exc).__name__}: {exc}"
    finally:
        rec.end = time.perf_counter()
        conn.close()


def drive_sse(host: str, port: int, api: SseApi, prompts: list[str], max_tokens: int
              ) -> list[StreamRecord]:
    """All prompts at once, one thread and one connection each."""
    records = [StreamRecord() for _ in prompts]
    gate = threading.Barrier(len(prompts))

    def client(i: int) -> None:
        gate.wait()
        _sse_stream(host, port, api, prompts[i], max_tokens, records[i])

    threads = [threading.Thread(target=client, args=(i,), daemon=True)
               for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(STREAM_TIMEOUT_S + 30)
    return records


# -- Hearth over gRPC ----------------------------------------------------------------------

async def _hearth_stream(client: Any, model: str, prompt: str, max_tokens: int,
                         rec: StreamRecord) -> None:
    rec.sent = time.perf_counter()
    try:
        async for chunk in client.generate(prompt, model=model, max_tokens=max_tokens,
                                           temperature=0.0, ignore_eos=True,
                                           timeout=STREAM_TIMEOUT_S):
            now = time.perf_counter()
            if chunk.token_ids:
                rec.arrivals.append((now, len(chunk.token_ids)))
            if chunk.HasField("usage"):
                rec.tokens = chunk.usage.completion_tokens
                rec.finish = _finish_name(chunk.finish_reason)
                rec.server_ttft = chunk.usage.ttft_seconds
    except Exception as exc:  # grpc.aio.AioRpcError and friends
        details = exc.details() if hasattr(exc, "details") else exc
        rec.error = f"{type(exc).__name__}: {details}"
    finally:
        rec.end = time.perf_counter()


def _finish_name(value: int) -> str:
    from runtime._proto.hearth.v1 import inference_pb2 as ipb

    return str(ipb.FinishReason.Name(value)).removeprefix("FINISH_REASON_").lower()


async def _hearth_all(addr: str, model: str, prompts: list[str], max_tokens: int
                      ) -> list[StreamRecord]:
    from runtime.client import AsyncHearthClient

    records = [StreamRecord() for _ in prompts]
    async with AsyncHearthClient(addr) as client:
        await client.get_model(model)  # connect before the clock starts
        await asyncio.gather(*(_hearth_stream(client, model, p, max_tokens, r)
                               for p, r in zip(prompts, records, strict=True)))
    return records


def drive_hearth(addr: str, model: str, prompts: list[str], max_tokens: int
                 ) -> list[StreamRecord]:
    return asyncio.run(_hearth_all(addr, model, prompts, max_tokens))


def server_ttft_p50(records: list[StreamRecord]) -> float | None:
    """The peer's own (server-side) TTFT p50, reported next to the client's."""
    return _pct([r.server_ttft for r in records if r.server_ttft is not None], 50)
