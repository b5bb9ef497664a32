"""The response cache on the real daemon: exact replay, per-client scope,
metrics, and nothing cached for sampled requests."""
from __future__ import annotations

import json
from pathlib import Path

from runtime._proto.hearth.v1 import inference_pb2 as ipb
from runtime.client import HearthClient
from tests.integration.conftest import start_daemon
from tests.integration.test_metrics import scrape, value


def test_cache_hits_replay_exactly_and_stay_per_client(tmp_path: Path, tiny_model: Path
                                                       ) -> None:
    sock = tmp_path / "h.sock"
    d = start_daemon(["--model", f"tiny={tiny_model}", "--listen", "127.0.0.1:0",
                      "--listen", f"unix:{sock}", "--metrics-listen", "127.0.0.1:0",
                      "--response-cache-mb", "16", "--parallel", "2", "--ctx", "2048",
                      "--threads", "1"], tmp_path)
    try:
        metrics_addr = json.loads(next(tmp_path.glob("ready-*.json")).read_text())["metrics"]
        with d.client() as c:
            first = list(c.generate("the patient", max_tokens=40, temperature=0.0,
                                    ignore_eos=True, logprobs=True, top_logprobs=2))
            again = list(c.generate("the patient", max_tokens=40, temperature=0.0,
                                    ignore_eos=True, logprobs=True, top_logprobs=2))
            assert not first[-1].cached and again[-1].cached
            assert "".join(x.text for x in again) == "".join(x.text for x in first)
            assert ([t for x in again for t in x.token_ids]
                    == [t for x in first for t in x.token_ids])
            assert ([lp.logprob for x in again for lp in x.logprobs]
                    == [lp.logprob for x in first for lp in x.logprobs])
            assert again[0].request_id and again[0].request_id != first[0].request_id
            assert again[-1].usage.completion_tokens == 40
            assert again[-1].usage.cached_tokens == again[-1].usage.prompt_tokens
            # Sampled without a seed: never cached.
            for _ in range(2):
                _, _, last = c.complete("the patient", max_tokens=5, temperature=0.9)
                assert not last.cached
            # A fixed seed is deterministic.
            a = c.complete("bank", max_tokens=12, temperature=0.9, seed=5, ignore_eos=True)
            b = c.complete("bank", max_tokens=12, temperature=0.9, seed=5, ignore_eos=True)
            assert b[2].cached and a[0] == b[0]
        # Another caller (the socket's uid, not the anonymous TCP client) does
        # not get the first caller's answer.
        with HearthClient(f"unix:{sock}", timeout=30) as u:
            other = list(u.generate("the patient", max_tokens=40, temperature=0.0,
                                    ignore_eos=True, logprobs=True, top_logprobs=2))
            assert not other[-1].cached
            assert "".join(x.text for x in other) == "".join(x.text for x in first)
        m = scrape(metrics_addr)
        assert value(m, "hearth_response_cache_lookups", "hearth_response_cache_lookups_total",
                     model="tiny", result="hit") == 2
        assert value(m, "hearth_response_cache_lookups", "hearth_response_cache_lookups_total",
                     model="tiny", result="miss") == 3
        assert value(m, "hearth_response_cache_entries", "hearth_response_cache_entries") == 3
    finally:
        assert d.stop() == 0, d.log()


def test_off_by_default(tiny_daemon) -> None:  # type: ignore[no-untyped-def]
    with tiny_daemon.client() as c:
        c.complete("cache me", max_tokens=4, temperature=0.0)
        _, _, last = c.complete("cache me", max_tokens=4, temperature=0.0)
    assert not last.cached and last.finish_reason != ipb.FINISH_REASON_UNSPECIFIED


def test_an_adapter_swap_is_never_answered_from_the_old_versions_cache(
        tmp_path: Path, tiny_model: Path) -> None:
    """Answers cached under adapter `clinic` v1 are not served once
    Models.SetAdapter has put v2 in its place: the first request after the
    swap is computed (not cached) and is v2's text, the same as v2 served
    under a name of its own; the one after it is cached again.  Checked
    that it fails with the cache key built from the adapter's name alone
    (core/inference.py's `engine.serial * 100003 + adapter_id` without
    `+ adapter_id`): the old version's answer came back cached."""
    from runtime.models.tiny import write_tiny_lora
    from tests.integration.test_sealed_serving import hearth

    state, key = tmp_path / "state", tmp_path / "master.key"
    common = ["--state-dir", str(state), "--key-file", str(key)]
    hearth("keys", "init", *common)
    for name, seed in (("clinic-v1", 1), ("clinic-v2", 2)):
        lora = write_tiny_lora(tmp_path / f"{name}.gguf", seed=seed)
        hearth("models", "import", str(lora), "--name", name, "--kind", "adapter", *common)
    config = tmp_path / "hearth.toml"
    config.write_text(f'''
[server]
listen = ["127.0.0.1:0", "unix:{tmp_path / "h.sock"}"]
response_cache_mb = 16

[models.tiny]
path = "{tiny_model}"
n_ctx = 2048
n_parallel = 2
threads = 1

[models.tiny.adapters]
clinic = "store:clinic-v1"
v2-alone = "store:clinic-v2"
''')
    d = start_daemon(["--config", str(config), *common], tmp_path)
    ask = {"max_tokens": 30, "temperature": 0.0, "ignore_eos": True}
    try:
        with d.client() as c:
            v1_first = c.complete("the patient", adapter="clinic", **ask)
            v1_again = c.complete("the patient", adapter="clinic", **ask)
            assert not v1_first[2].cached and v1_again[2].cached
            assert v1_again[0] == v1_first[0]
            v2_alone = c.complete("the patient", adapter="v2-alone", **ask)
            assert v2_alone[0] != v1_first[0]
            with d.admin_client() as admin:          # setting adapters needs an admin
                admin.set_adapter("tiny", "clinic", "clinic-v2")
            swapped = c.complete("the patient", adapter="clinic", **ask)
            assert not swapped[2].cached
            assert swapped[0] == v2_alone[0]
            swapped_again = c.complete("the patient", adapter="clinic", **ask)
            assert swapped_again[2].cached and swapped_again[0] == v2_alone[0]
    finally:
        assert d.stop() == 0, d.log()
