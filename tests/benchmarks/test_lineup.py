"""The peers' command lines and what the benchmark reads from llama.cpp's output, from
recorded-format text: no model, no peer.

The tuned flags were checked against the pinned llama-cpp-python sdist's
vendor/llama.cpp/common/arg.cpp (`--kv-unified`/`--no-kv-unified`, `--swa-checkpoints`
as an alias of `--ctx-checkpoints`, `--cache-ram`, `--flash-attn on|off|auto`, and
`-kvu`/`-fa` for llama-batched-bench) and llama_cpp/server/settings.py (`flash_attn`,
`interrupt_requests`).
"""
from __future__ import annotations

import platform
from pathlib import Path

import pytest

from benchmarks.lineup import (
    DEFAULTS,
    PEERS,
    TUNED,
    HearthSettings,
    Setup,
    batched_bench_command,
    hearth_command,
    inprocess_command,
    llama_cpp_server_command,
    llama_server_command,
    parse_batched_bench,
    parse_flash_attn,
    parse_kv_buffer_mib,
    parse_kv_unified,
)

# llama-batched-bench's output, in the layout its LOG calls print (widths 6, 6, 4, 6 and
# 8 per column), among the other lines it prints
BATCHED_BENCH_OUTPUT = """\
llama_context: n_ctx         = 8192
llama_kv_cache:        CPU KV buffer size =    90.00 MiB

main: n_kv_max = 8192, n_batch = 2048, n_ubatch = 512, flash_attn = -1, is_pp_shared = 0, \
is_tg_separate = 0, n_gpu_layers = -1, n_threads = 2, n_threads_batch = 2

|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|
|    64 |     64 |    1 |    128 |    0.210 |   304.76 |    1.517 |    42.19 |    1.727 |    74.12 |
|    64 |     64 |   16 |   2048 |    3.410 |   300.29 |   10.882 |    94.10 |   14.292 |   143.30 |

llama_perf_context_print:        load time =     123.45 ms
"""

# llama.cpp's context and KV-cache lines for Gemma 3 (two caches: global and sliding
# window), as llama-server prints them and as Hearth's daemon prefixes them
LLAMA_SERVER_LOG = """\
llama_context: n_seq_max             = 32
llama_context: flash_attn            = auto
llama_context: kv_unified            = false
llama_kv_cache_iswa: creating non-SWA KV cache, size = 8192 cells
llama_kv_cache:        CPU KV buffer size =    48.00 MiB
llama_kv_cache: size =   48.00 MiB (  8192 cells,   3 layers, 32/32 seqs), K (f16):   24.00 MiB, \
V (f16):   24.00 MiB
llama_kv_cache_iswa: creating     SWA KV cache, size = 1280 cells
llama_kv_cache:        CPU KV buffer size =    37.50 MiB
sched_reserve: Flash Attention enabled
srv  load_model: prompt cache is enabled, size limit: 8192 MiB
"""

HEARTH_PROBE_LOG = """\
debug llama.cpp: llama_context: flash_attn            = auto
info llama.cpp: llama_context: kv_unified            = true
info llama.cpp: llama_kv_cache:        CPU KV buffer size =    48.00 MiB
info llama.cpp: llama_kv_cache:        CPU KV buffer size =    12.25 MiB
warning llama.cpp: sched_reserve: Flash Attention not supported, set to disabled
"""


def test_parse_batched_bench_reads_every_row_by_b() -> None:
    """Checked to fail: keying the rows by PP (64) instead of B merges both rows into one;
    matching the header or the rule line raises ValueError on float()."""
    rows = parse_batched_bench(BATCHED_BENCH_OUTPUT)
    assert sorted(rows) == [1, 16]
    assert rows[1]["S_TG t/s"] == pytest.approx(42.19)
    assert rows[16]["S_TG t/s"] == pytest.approx(94.10)
    assert rows[16]["N_KV"] == 2048 and rows[16]["T s"] == pytest.approx(14.292)
    assert parse_batched_bench("no table here\n| PP | TG |\n") == {}


def test_kv_buffer_sums_both_caches_and_skips_the_size_summary() -> None:
    """Checked to fail: matching "size = … MiB" instead of "KV buffer size" also counts
    the 48 MiB summary line (133.5); keeping only the first match gives 48."""
    assert parse_kv_buffer_mib(LLAMA_SERVER_LOG) == pytest.approx(85.5)
    assert parse_kv_buffer_mib(HEARTH_PROBE_LOG) == pytest.approx(60.25)
    assert parse_kv_buffer_mib(BATCHED_BENCH_OUTPUT) == pytest.approx(90.0)
    assert parse_kv_buffer_mib("llama_context: n_ctx = 8192\n") is None


@pytest.mark.parametrize(("text", "expected"), [
    (LLAMA_SERVER_LOG, "on"),  # auto, resolved to enabled
    (HEARTH_PROBE_LOG, "off"),  # auto, resolved to disabled
    ("llama_context: flash_attn = enabled\n", "on"),
    ("llama_context: flash_attn = disabled\n", "off"),
    ("llama_context: flash_attn = auto\n", "auto"),  # asked for auto, outcome not logged
    ("no context lines\n", None),
])
def test_flash_attention_as_llama_cpp_resolved_it(text: str, expected: str | None) -> None:
    """Checked to fail: returning the requested setting ("auto") without reading the
    resolution line fails the first two cases."""
    assert parse_flash_attn(text) == expected


def test_hearth_settings_from_its_log() -> None:
    """Checked to fail: defaulting kv_unified instead of reading "kv_unified = false"
    fails the second assertion."""
    s = HearthSettings.from_log(HEARTH_PROBE_LOG, source="probe")
    assert (s.flash_attn, s.kv_unified, s.kv_buffer_mib, s.source) == ("off", True, 60.25,
                                                                         "probe")
    assert parse_kv_unified(LLAMA_SERVER_LOG) is False
    split = HearthSettings.from_log(LLAMA_SERVER_LOG, source="probe")
    assert (split.kv_unified, split.flash_attn, split.kv_buffer_mib) == (False, "on", 85.5)
    empty = HearthSettings.from_log("", source="probe")
    assert (empty.flash_attn, empty.kv_unified, empty.kv_buffer_mib) == ("auto", True, None)


def _setup() -> Setup:
    return Setup(model=Path("/m/gemma.gguf"), threads=2, max_tokens=64, ns=[1, 8],
                 prompts={}, log_dir=Path("/tmp"))


ON = HearthSettings(flash_attn="on", kv_unified=True)
AUTO = HearthSettings(flash_attn="auto", kv_unified=True)
OFF_SPLIT = HearthSettings(flash_attn="off", kv_unified=False)


def _after(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_llama_server_defaults_are_as_users_run_it() -> None:
    """Checked to fail: adding the tuning flags whatever `tuned` says."""
    cmd = llama_server_command(Path("/b/llama-server"), _setup(), 8080, tuned=False,
                               settings=ON)
    assert cmd[:3] == ["/b/llama-server", "-m", "/m/gemma.gguf"]
    assert (_after(cmd, "-np"), _after(cmd, "-c"), _after(cmd, "-t")) == ("32", "8192", "2")
    for flag in ("--kv-unified", "--no-kv-unified", "--swa-checkpoints", "--cache-ram",
                 "--flash-attn", "-fa"):
        assert flag not in cmd


def test_llama_server_tuned_copies_hearths_settings() -> None:
    """Checked to fail: dropping any of the four tuning flags, or passing "auto" when
    Hearth's context ran with flash attention on."""
    cmd = llama_server_command(Path("/b/llama-server"), _setup(), 8080, tuned=True,
                               settings=ON)
    assert "--kv-unified" in cmd
    assert _after(cmd, "--swa-checkpoints") == "0"
    assert _after(cmd, "--cache-ram") == "0"
    assert _after(cmd, "--flash-attn") == "on"
    other = llama_server_command(Path("/b/llama-server"), _setup(), 8080, tuned=True,
                                 settings=OFF_SPLIT)
    assert "--no-kv-unified" in other and "--kv-unified" not in other
    assert _after(other, "--flash-attn") == "off"
    assert _after(llama_server_command(Path("/b/s"), _setup(), 1, True, AUTO),
                  "--flash-attn") == "auto"


def test_llama_cpp_python_server_variants() -> None:
    """Defaults: no interrupt or flash-attention flag; tuned: both, flash attention on for
    Hearth's "auto" (llama.cpp turns it on for a CPU) and off for "off".  Checked to fail:
    mapping "auto" to False."""
    default = llama_cpp_server_command(_setup(), 9000, tuned=False, settings=ON)
    assert "--interrupt_requests" not in default and "--flash_attn" not in default
    assert default[1:3] == ["-m", "llama_cpp.server"]
    tuned = llama_cpp_server_command(_setup(), 9000, tuned=True, settings=AUTO)
    assert _after(tuned, "--interrupt_requests") == "False"
    assert _after(tuned, "--flash_attn") == "True"
    off = llama_cpp_server_command(_setup(), 9000, tuned=True, settings=OFF_SPLIT)
    assert _after(off, "--flash_attn") == "False"


def test_in_process_variants() -> None:
    """Checked to fail: passing --flash-attn in the defaults run."""
    assert "--flash-attn" not in inprocess_command(_setup(), tuned=False, settings=ON)
    assert inprocess_command(_setup(), tuned=True, settings=ON)[-2:] == ["--flash-attn", "on"]
    assert inprocess_command(_setup(), tuned=True, settings=OFF_SPLIT)[-1] == "off"


def test_batched_bench_runs_one_n_with_hearths_kv_layout() -> None:
    """Checked to fail: passing every N at once (-npl 1,8) or leaving out -kvu."""
    cmd = batched_bench_command(Path("/b/llama-batched-bench"), _setup(), 8, ON)
    assert _after(cmd, "-npl") == "8"
    assert (_after(cmd, "-npp"), _after(cmd, "-ntg")) == ("64", "64")
    assert _after(cmd, "-fa") == "on" and "-kvu" in cmd
    assert "-no-kvu" in batched_bench_command(Path("/b/x"), _setup(), 8, OFF_SPLIT)


def test_only_the_hearth_probe_turns_llama_cpp_logging_on() -> None:
    """Checked to fail: leaving --log-level debug on the measured daemon."""
    measured = hearth_command(_setup(), Path("/tmp/ready.json"))
    assert "--log-level" not in measured
    probe = hearth_command(_setup(), Path("/tmp/ready.json"), log_level="debug")
    assert probe == [*measured, "--log-level", "debug"]


def test_every_serving_peer_runs_as_users_run_it_and_tuned() -> None:
    """The report finds a family's tuned peer as FAMILY-tuned and its defaults as FAMILY.
    Checked to fail: removing llama-server-tuned from PEERS."""
    families = {s.family for s in PEERS.values() if s.variant in (DEFAULTS, TUNED)}
    assert families == {"llama-server", "llama-cpp-python", "llama-cpp-python-server"}
    for family in families:
        assert PEERS[family].variant == DEFAULTS
        assert PEERS[f"{family}-tuned"].variant == TUNED
        assert PEERS[family].ns == PEERS[f"{family}-tuned"].ns
    assert not any("ceiling" in s.label for s in PEERS.values())


def test_the_peers_build_with_the_same_cmake_args_as_llama_cpp_python(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """CMAKE_ARGS (what llama-cpp-python's build reads) reaches the peers' build, in a
    build folder of its own.  Checked to fail: ignoring CMAKE_ARGS keeps one folder for a
    CUDA and a CPU build."""
    from benchmarks.peers import peers_build_dir, peers_cmake_args

    monkeypatch.delenv("HEARTH_PEERS_BUILD", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CMAKE_ARGS", "")
    plain = peers_build_dir()
    assert plain == tmp_path / ".cache/hearth/peers-build" and peers_cmake_args() == []
    monkeypatch.setenv("CMAKE_ARGS", "-DGGML_CUDA=on -DGGML_AMX_INT8=OFF")
    assert peers_cmake_args() == ["-DGGML_CUDA=on", "-DGGML_AMX_INT8=OFF"]
    assert peers_build_dir() != plain
    assert peers_build_dir().name.startswith("peers-build-")
    monkeypatch.setenv("HEARTH_PEERS_BUILD", str(tmp_path / "mine"))
    assert peers_build_dir() == tmp_path / "mine"


def test_without_cmake_args_the_peers_take_the_cpu_builds_options(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset CMAKE_ARGS means Hearth's own CPU options, not llama.cpp's defaults (which
    built AMX kernels that died with SIGILL on this kind of VM).  Checked to fail:
    reading an unset CMAKE_ARGS as empty gives []."""
    from benchmarks.peers import peers_cmake_args

    monkeypatch.delenv("CMAKE_ARGS", raising=False)
    monkeypatch.delenv("HEARTH_LLAMA_CMAKE_ARGS", raising=False)
    args = peers_cmake_args()
    assert "-DGGML_RPC=ON" in args
    if platform.machine() == "x86_64":
        assert any(a.startswith("-DCMAKE_C_FLAGS=") and "-mno-amx-tile" in a for a in args)
