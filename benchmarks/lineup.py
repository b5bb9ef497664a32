"""Who the serving benchmark measures, with which command line, and what their logs say.

Every serving peer runs twice: as users run it (its defaults) and tuned to the settings
Hearth runs with (the same KV layout, no context checkpoints, no host prompt cache, the
same flash-attention setting), so the goals can be judged like for like while the
defaults' ratios are still reported.  Everything in this module is pure (command lines
and log parsing) and unit-tested without a model or a peer (tests/benchmarks/).
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
DEFAULTS, TUNED, REFERENCE, SUBJECT = "defaults", "tuned", "reference", "subject"
LLAMA_CPP_SERVER_NS = (1, 4, 8)  # its FIFO server takes minutes beyond N = 8


@dataclass(frozen=True)
class Setup:
    """What every peer shares in one run."""

    model: Path
    threads: int
    max_tokens: int
    ns: list[int]
    prompts: dict[int, list[list[str]]]  # N -> one list of N distinct prompts per repetition
    log_dir: Path
    n_ctx: int = 8192
    n_parallel: int = 32


@dataclass(frozen=True)
class HearthSettings:
    """The settings of Hearth's llama.cpp context that the tuned peers copy.

    Read from llama.cpp's log of a Hearth start (`source` says so); when the log does not
    tell, Hearth's configured defaults (flash attention "auto", one unified KV pool)."""

    flash_attn: str = "auto"  # on | off | auto (what llama.cpp resolves it to is unknown)
    kv_unified: bool = True
    kv_buffer_mib: float | None = None  # the KV buffers llama.cpp allocated
    source: str = "Hearth's defaults (not read from a log)"

    @classmethod
    def from_log(cls, text: str, source: str) -> HearthSettings:
        unified = parse_kv_unified(text)
        return cls(flash_attn=parse_flash_attn(text) or "auto",
                   kv_unified=True if unified is None else unified,
                   kv_buffer_mib=parse_kv_buffer_mib(text), source=source)


@dataclass(frozen=True)
class PeerSpec:
    """One line of the benchmark's table."""

    key: str
    family: str  # the peer a ratio is against: its defaults and tuned runs share it
    variant: str  # DEFAULTS | TUNED | REFERENCE (not a serving peer) | SUBJECT (Hearth)
    label: str
    ns: tuple[int, ...] | None = None  # the N it is measured at; None: every N

    def measured_at(self, n: int) -> bool:
        return self.ns is None or n in self.ns


PEERS: dict[str, PeerSpec] = {s.key: s for s in [
    PeerSpec("batched-bench", "batched-bench", REFERENCE,
             "llama-batched-bench: llama.cpp decode alone, no server or sampling (reference)"),
    PeerSpec("llama-cpp-python", "llama-cpp-python", DEFAULTS,
             "llama-cpp-python in-process, one stream (defaults: flash attention off)", (1,)),
    PeerSpec("llama-cpp-python-tuned", "llama-cpp-python", TUNED,
             "llama-cpp-python in-process, one stream (tuned: Hearth's flash attention)", (1,)),
    PeerSpec("llama-server", "llama-server", DEFAULTS,
             "llama-server (defaults: per-slot KV, SWA checkpoints, 8 GiB prompt cache)"),
    PeerSpec("llama-server-tuned", "llama-server", TUNED,
             "llama-server (tuned: unified KV, no checkpoints, no prompt cache)"),
    PeerSpec("llama-cpp-python-server", "llama-cpp-python-server", DEFAULTS,
             "llama-cpp-python server (defaults: interrupts streams, flash attention off)",
             LLAMA_CPP_SERVER_NS),
    PeerSpec("llama-cpp-python-server-tuned", "llama-cpp-python-server", TUNED,
             "llama-cpp-python server (tuned: --interrupt_requests False, "
             "Hearth's flash attention)", LLAMA_CPP_SERVER_NS),
    PeerSpec("hearth", "hearth", SUBJECT, "Hearth"),
]}


def _fa_word(settings: HearthSettings) -> str:
    """llama.cpp's `--flash-attn` value for Hearth's setting."""
    return settings.flash_attn if settings.flash_attn in ("on", "off") else "auto"


def _fa_bool(settings: HearthSettings) -> bool:
    """llama-cpp-python's flash_attn is on or off; llama.cpp's "auto" turns it on for a
    CPU (and for a GPU that supports it), so "auto" maps to on."""
    return settings.flash_attn != "off"


def batched_bench_command(tool: Path, setup: Setup, n: int, settings: HearthSettings
                          ) -> list[str]:
    """One N at a time, so its runs interleave with the other peers'; with Hearth's KV
    layout and flash attention."""
    return [str(tool), "-m", str(setup.model), "-c", str(setup.n_ctx), "-b", "2048",
            "-ub", "512", "-npp", "64", "-ntg", str(setup.max_tokens), "-npl", str(n),
            "-t", str(setup.threads), "-fa", _fa_word(settings),
            "-kvu" if settings.kv_unified else "-no-kvu"]


def llama_server_command(tool: Path, setup: Setup, port: int, tuned: bool,
                         settings: HearthSettings) -> list[str]:
    t = str(setup.threads)
    cmd = [str(tool), "-m", str(setup.model), "--host", HOST, "--port", str(port),
           "-np", str(setup.n_parallel), "-c", str(setup.n_ctx), "-t", t, "-tb", t,
           "--no-webui"]
    if tuned:
        cmd += ["--kv-unified" if settings.kv_unified else "--no-kv-unified",
                "--swa-checkpoints", "0", "--cache-ram", "0",
                "--flash-attn", _fa_word(settings)]
    return cmd


def llama_cpp_server_command(setup: Setup, port: int, tuned: bool,
                             settings: HearthSettings) -> list[str]:
    t = str(setup.threads)
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(setup.model),
           "--n_ctx", str(setup.n_ctx), "--n_threads", t, "--n_threads_batch", t,
           "--host", HOST, "--port", str(port)]
    if tuned:
        cmd += ["--interrupt_requests", "False",
                "--flash_attn", str(_fa_bool(settings))]
    return cmd


def inprocess_command(setup: Setup, tuned: bool, settings: HearthSettings) -> list[str]:
    cmd = [sys.executable, "-m", "benchmarks.inprocess_worker", str(setup.model),
           str(setup.threads), str(setup.n_ctx), str(setup.max_tokens)]
    if tuned:
        cmd += ["--flash-attn", "on" if _fa_bool(settings) else "off"]
    return cmd


def hearth_command(setup: Setup, ready_file: Path, log_level: str | None = None
                   ) -> list[str]:
    cmd = [sys.executable, "-m", "runtime.cli.main", "serve",
           "--model", f"bench={setup.model}", "--listen", f"{HOST}:0",
           "--parallel", str(setup.n_parallel), "--ctx", str(setup.n_ctx),
           "--threads", str(setup.threads), "--ready-file", str(ready_file)]
    if log_level:
        cmd += ["--log-level", log_level]
    return cmd


# -- what llama.cpp's logs say -----------------------------------------------------------------

_ROW = re.compile(r"^\|\s*\d+\s*\|")
_COLUMNS = ["PP", "TG", "B", "N_KV", "T_PP s", "S_PP t/s", "T_TG s", "S_TG t/s", "T s", "S t/s"]


def parse_batched_bench(text: str) -> dict[int, dict[str, float]]:
    """llama-batched-bench's markdown table, by B (the number of parallel sequences);
    header, rule and any other line are skipped."""
    rows = {}
    for line in text.splitlines():
        if _ROW.match(line.strip()):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            row = dict(zip(_COLUMNS, map(float, cells), strict=True))
            rows[int(row["B"])] = row
    return rows


_KV_BUFFER = re.compile(r"KV buffer size\s*=\s*([0-9]+(?:\.[0-9]+)?)\s*MiB")
_FA_SETTING = re.compile(r"\bflash_attn\s*=\s*(\w+)")
_KV_UNIFIED = re.compile(r"\bkv_unified\s*=\s*(true|false)\b")


def parse_kv_buffer_mib(text: str) -> float | None:
    """The KV buffers llama.cpp allocated, in MiB: the sum of its "KV buffer size" lines
    (a sliding-window model such as Gemma 3 has two caches, so two lines per context)."""
    sizes = [float(m) for m in _KV_BUFFER.findall(text)]
    return sum(sizes) if sizes else None


def parse_flash_attn(text: str) -> str | None:
    """"on" or "off" as llama.cpp's context used it, "auto" when it was asked for auto and
    the log does not say how that resolved, None when the log does not say at all."""
    setting = _FA_SETTING.search(text)
    if setting is None:
        return None
    word = setting.group(1).lower()
    if word in ("enabled", "on", "true", "1"):
        return "on"
    if word in ("disabled", "off", "false", "0"):
        return "off"
    if "Flash Attention not supported" in text:
        return "off"
    if "Flash Attention enabled" in text:
        return "on"
    return "auto"


def parse_kv_unified(text: str) -> bool | None:
    found = _KV_UNIFIED.search(text)
    return None if found is None else found.group(1) == "true"
