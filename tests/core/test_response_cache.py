"""The response cache on its own: keys, LRU order, the byte bound."""
from __future__ import annotations

from runtime.core.response_cache import ResponseCache, is_deterministic
from runtime.core.types import GenerateChunk, GenerationOptions, Usage

OPTS = GenerationOptions(temperature=0.0, max_tokens=8)


def answer(text: str) -> list[GenerateChunk]:
    return [GenerateChunk(text[:2], [1, 2]),
            GenerateChunk(text[2:], [3], finish_reason="stop",
                          usage=Usage(4, 3, 0, 0.0, 0.1, 0.2), model="m")]


def test_determinism() -> None:
    """Greedy or seeded; the server default temperature (0.8) samples."""
    assert is_deterministic(GenerationOptions(temperature=0.0))
    assert is_deterministic(GenerationOptions(seed=3))
    assert is_deterministic(GenerationOptions(temperature=0.8, seed=3))
    assert not is_deterministic(GenerationOptions(temperature=0.8))
    assert not is_deterministic(GenerationOptions())


def test_keys_separate_everything_that_decides_the_output() -> None:
    c = ResponseCache(1 << 20)
    base = c.key("m", 1, "alice", "generate", [1, 2, 3], OPTS, 8)
    assert base == c.key("m", 1, "alice", "generate", [1, 2, 3], OPTS, 8)
    others = {
        c.key("n", 1, "alice", "generate", [1, 2, 3], OPTS, 8),        # model
        c.key("m", 2, "alice", "generate", [1, 2, 3], OPTS, 8),        # reloaded engine
        c.key("m", 1, "bob", "generate", [1, 2, 3], OPTS, 8),          # another client
        c.key("m", 1, "alice", "generate", [1, 2, 4], OPTS, 8),        # prompt
        c.key("m", 1, "alice", "generate", [1, 2, 3], OPTS, 9),        # length
        c.key("m", 1, "alice", "generate", [1, 2, 3],
              GenerationOptions(temperature=0.0, stop=("x",)), 8),      # any option
        c.key("m", 1, "alice", "generate", [1, 2, 3],
              GenerationOptions(temperature=0.0, logprobs=True), 8),
    }
    assert base not in others and len(others) == 7
    shared = ResponseCache(1 << 20, shared=True)
    assert (shared.key("m", 1, "alice", "generate", [1], OPTS, 8)
            == shared.key("m", 1, "bob", "generate", [1], OPTS, 8))


def test_lru_within_the_byte_bound() -> None:
    c = ResponseCache(8 << 10)
    keys = [c.key("m", 1, "a", "generate", [i], OPTS, 8) for i in range(40)]
    for k in keys:
        assert c.put(k, answer("hello there"))
    stats = c.stats()
    assert 0 < stats.bytes <= 8 << 10 and stats.evictions == 40 - stats.entries
    assert c.get(keys[0]) is None                # oldest went first
    assert c.get(keys[-1]) is not None
    # Touching an entry protects it from the next eviction.
    survivor = keys[-stats.entries]
    assert c.get(survivor) is not None
    c.put(c.key("m", 1, "a", "generate", [999], OPTS, 8), answer("new"))
    assert c.get(survivor) is not None
    assert c.stats().hits == 3 and c.stats().misses == 1


def test_an_answer_bigger_than_a_quarter_is_not_kept() -> None:
    c = ResponseCache(4 << 10)
    assert not c.put(b"k", answer("x" * 2000))
    assert c.get(b"k") is None and c.stats().entries == 0


def test_disabled_by_default() -> None:
    assert not ResponseCache(0).enabled
