"""The one table of generation options (core/options.py): every other place
derives from it, so each sampling option is spelled in four files only."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from runtime._proto.hearth.v1 import inference_pb2 as ipb
from runtime.core.options import OPTIONS, SAMPLING, GenerationOptions, Kind
from runtime.core.validation import sampling_from
from runtime.native import Sampling, ffi

ROOT = Path(__file__).resolve().parents[2]
# The four places a sampling option may be spelled: the wire, the C
# contract, the C code that uses it, and the table.
ALLOWED = {"proto/hearth/v1/inference.proto", "native/include/hearth_core.h",
           "native/src/sampling.c", "runtime/core/options.py"}
# Files where the same word means something else.
UNRELATED = {
    # the federation's, the drift calibration's and the tiny test model's random seeds
    "seed": ("runtime/federation/", "runtime/cli/fed.py", "runtime/models/tiny.py",
             "runtime/cli/drift_simulate.py",
             "runtime/drift/",
             # a distilled draft's LoRA initialisation and text order
             "runtime/distill/", "runtime/cli/distill.py",
             "proto/hearth/federation/"),
    # a body temperature in the synthetic clinical corpus; and a client of the
    # API (the bias evaluation) asking for greedy decoding by its name
    # explanations ask for the greedy answer by its name too
    "temperature": ("runtime/federation/corpus.py", "runtime/transparency/scoring.py",
                    "runtime/core/explain.py"),
}


def _git_grep(word: str) -> set[str]:
    try:
        out = subprocess.run(
            ["git", "grep", "-lw", word, "--", "runtime", "native", "proto",
             ":!runtime/_proto"], cwd=ROOT, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        pytest.skip("git is not installed")
    if out.returncode not in (0, 1):
        pytest.skip(f"not a git checkout: {out.stderr.strip()}")
    return {p for p in out.stdout.split() if not p.startswith(UNRELATED.get(word, ("\0",)))}


def test_the_sampling_options_are_the_fields_of_hearth_sampling() -> None:
    assert sorted(o.name for o in SAMPLING) == sorted(
        name for name, _ in ffi.typeof("hearth_sampling").fields)


@pytest.mark.parametrize("name", [o.name for o in SAMPLING])
def test_each_sampling_option_is_spelled_in_four_files(name: str) -> None:
    """Adding an option touches the table, the proto, the header and
    sampling.c, and nothing else.  Fails on e3a5e70: presence_penalty was
    spelled in 9 files (the converters, validation, the types, the
    binding), penalty_last_n also in engine.c, temperature in the CLI."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    found = _git_grep(name)
    assert found <= ALLOWED, f"{name} is also spelled in {sorted(found - ALLOWED)}"
    assert len(found) <= 4


def test_every_option_is_a_hearth_v1_field_of_both_requests() -> None:
    """The converters read hearth.v1 by the table's names: each option is a
    field of GenerateRequest and ChatRequest, with presence exactly where
    "unset" means the server default."""
    for message in (ipb.GenerateRequest, ipb.ChatRequest):
        by_name = message.DESCRIPTOR.fields_by_name
        for row in OPTIONS:
            if row.kind is Kind.STRUCTURED:
                continue
            assert row.name in by_name, (message.DESCRIPTOR.name, row.name)
            assert by_name[row.name].has_presence == (row.empty is None), row.name


def test_server_defaults_win_over_the_c_defaults() -> None:
    """The core fills every sampling field from the table, so a request
    never sees hearth_sampling_init's defaults (temperature 1, top-k, top-p
    and min-p off); these are the defaults effective on e3a5e70."""
    resolved = dict(sampling_from(GenerationOptions()).values)
    assert resolved == {o.name: o.default for o in SAMPLING if o.default is not None}
    on_e3a5e70 = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05,
                  "repeat_penalty": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0,
                  "penalty_last_n": 64}
    assert {name: resolved[name] for name in on_e3a5e70} == on_e3a5e70
    assert "seed" not in resolved           # unset: the C default, a random seed


def test_every_row_is_consistent() -> None:
    for row in OPTIONS:
        if row.kind in (Kind.INT, Kind.FLOAT) and row.default is not None:
            assert row.lo is not None and row.lo <= row.default, row.name
            assert row.hi is None or row.default <= row.hi, row.name
        if row.kind is Kind.TEXT_LIST:
            assert row.max_items and row.max_bytes, f"{row.name}: a list needs a budget"
        if row.kind is Kind.INT and row.empty is None and row.name != "max_tokens":
            assert row.hi is not None, f"{row.name}: an integer needs an upper bound"


def test_the_binding_copies_only_fields_of_hearth_sampling() -> None:
    assert Sampling(top_k=3, seed=None).values == (("top_k", 3),)
    with pytest.raises(TypeError, match="no field tempreature"):
        Sampling(tempreature=0.5)
