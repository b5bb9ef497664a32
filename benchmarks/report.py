"""The results of one run: ratios against the goals, JSON, Markdown and a PNG plot."""
from __future__ import annotations

import dataclasses
import json
import operator
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.peers import PeerResult


@dataclass
class Ratio:
    """One goal, computed from this run's figures.  `value` is judged: against the peer tuned
    to Hearth's settings (`against`); `defaults_value` is the same ratio against the peer as
    users run it, reported beside it and never judged."""

    name: str
    value: float | None
    goal: str
    passed: bool | None  # None when a figure it needs is missing from this run
    against: str | None = None
    defaults_value: float | None = None
    defaults_against: str | None = None
    stretch: str | None = None
    stretch_passed: bool | None = None
    unit: str = "x"

    def _fmt(self, value: float) -> str:
        return f"{value:.1f} MB" if self.unit == "MB" else f"{value:.3f}"

    def line(self) -> str:
        vs = f" against {self.against}" if self.against else ""
        if self.value is None:
            text = f"{self.name}: n/a{vs} (goal {self.goal}) — not measured in this run"
        else:
            verdict = "PASS" if self.passed else "MISS"
            text = f"{self.name}: {self._fmt(self.value)}{vs} (goal {self.goal}) {verdict}"
            if self.stretch is not None:
                text += f"; stretch {self.stretch} {'PASS' if self.stretch_passed else 'MISS'}"
        if self.defaults_against:
            shown = "n/a" if self.defaults_value is None else self._fmt(self.defaults_value)
            text += f"; {shown} against {self.defaults_against} (defaults, not judged)"
        return text


def _figure(peers: dict[str, PeerResult], key: str, n: int, attr: str) -> float | None:
    peer = peers.get(key)
    level = peer.level(n) if peer else None
    return getattr(level, attr) if level else None


def _div(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def _ratio(name: str, peers: dict[str, PeerResult], family: str, n: int, attr: str,
           goal: float, cmp: Callable[[float, float], bool], stretch: float | None = None
           ) -> Ratio:
    """Hearth's figure over the family's tuned peer (judged) and its defaults peer."""
    sign = ">=" if cmp is operator.ge else "<="
    hearth = _figure(peers, "hearth", n, attr)
    tuned, defaults = f"{family}-tuned", family
    value = _div(hearth, _figure(peers, tuned, n, attr))
    return Ratio(name=name, value=value, goal=f"{sign} {goal}", against=tuned,
                 passed=None if value is None else cmp(value, goal),
                 defaults_value=_div(hearth, _figure(peers, defaults, n, attr)),
                 defaults_against=defaults,
                 stretch=None if stretch is None else f"{sign} {stretch}",
                 stretch_passed=None if value is None or stretch is None
                 else cmp(value, stretch))


def ratios(results: list[PeerResult]) -> list[Ratio]:
    peers = {p.key: p for p in results}
    out = [_ratio(f"Hearth ÷ llama-server, aggregate tok/s at N={n}", peers, "llama-server",
                  n, "agg_tok_s", 1.1, operator.ge) for n in (8, 16)]
    for n in (8, 16):
        value = _div(_figure(peers, "hearth", n, "decode_tok_s"),
                     _figure(peers, "batched-bench", n, "decode_tok_s"))
        out.append(Ratio(name=f"Hearth decode-only ÷ llama-batched-bench S_TG at N={n}",
                         value=value, goal=">= 0.9", against="batched-bench",
                         passed=None if value is None else value >= 0.9))
    out.append(_ratio("Hearth ÷ llama-cpp-python in-process, tok/s at N=1", peers,
                      "llama-cpp-python", 1, "agg_tok_s", 0.95, operator.ge))
    out.append(_ratio("Hearth ÷ llama-server, TTFT p50 at N=8", peers, "llama-server", 8,
                      "ttft_p50_s", 1.0, operator.le))
    hearth = peers.get("hearth")
    beyond = hearth.info.get("rss_beyond_model_kv_peak_mb") if hearth else None
    out.append(Ratio(name="Hearth peak RSS beyond model file + KV allocated", value=beyond,
                     goal="<= 150 MB", passed=None if beyond is None else beyond <= 150,
                     unit="MB"))
    return out


def reference_line(results: list[PeerResult], ns: list[int]) -> str | None:
    """Whether llama-batched-bench is above Hearth, N by N: it is a ceiling only where it is."""
    peers = {p.key: p for p in results}
    pairs: list[tuple[int, float, float]] = []
    for n in ns:
        ref, h = (_figure(peers, k, n, "agg_tok_s") for k in ("batched-bench", "hearth"))
        if ref is not None and h is not None:
            pairs.append((n, ref, h))
    if not pairs:
        return None
    above = [str(n) for n, ref, h in pairs if ref > h]
    below = [str(n) for n, ref, h in pairs if ref <= h]
    text = ("llama-batched-bench counts llama.cpp's decode alone (no server, no sampling, "
            "no prompt processing in the figure), a reference rather than a bound: "
            "Hearth ÷ it = " + ", ".join(f"{h / ref:.2f} at N={n}" for n, ref, h in pairs))
    if above:
        text += f"; it is above Hearth at N = {', '.join(above)}"
    if below:
        text += f"; Hearth is above it at N = {', '.join(below)}"
    return text + "."


def to_json(meta: dict[str, Any], results: list[PeerResult], goals: list[Ratio]
            ) -> dict[str, Any]:
    return {**meta, "peers": [dataclasses.asdict(p) for p in results],
            "ratios": [{**dataclasses.asdict(r), "line": r.line()} for r in goals],
            "reference": reference_line(results, meta["parameters"]["concurrency"])}


def _cell(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def memory_lines(results: list[PeerResult]) -> list[str]:
    """Each server's RSS beyond the model file and the KV llama.cpp allocated for it."""
    lines = []
    for p in results:
        i = p.info
        if p.status != "ok" or "rss_beyond_model_kv_peak_mb" not in i:
            continue
        bound = (f"; Models.Get's upper bound {i['kv_upper_bound_mb']:.0f} MB"
                 if "kv_upper_bound_mb" in i else "")
        idle = (f"{i['rss_beyond_model_kv_idle_mb']:.0f} MB idle, "
                if "rss_beyond_model_kv_idle_mb" in i else "")
        lines.append(f"{p.key}: RSS {i.get('idle_rss_mb', float('nan')):.0f} MB idle once "
                     f"ready, {i['peak_rss_mb']:.0f} MB at peak; model file "
                     f"{i['model_file_mb']:.0f} MB, KV allocated {i['kv_allocated_mb']:.0f} MB "
                     f"(llama.cpp's KV buffers, from its log{bound}); beyond model + KV: "
                     f"{idle}{i['rss_beyond_model_kv_peak_mb']:.0f} MB at peak.")
    return lines


def _goal_row(r: Ratio) -> str:
    def fmt(v: float | None) -> str:
        return "—" if v is None else r._fmt(v)

    verdict = "n/a" if r.passed is None else ("PASS" if r.passed else "MISS")
    if r.stretch is not None and r.stretch_passed is not None:
        verdict += f" (stretch {r.stretch}: {'PASS' if r.stretch_passed else 'MISS'})"
    return (f"| {r.name} | {r.goal} | {fmt(r.value)} | {verdict} | "
            f"{fmt(r.defaults_value) if r.defaults_against else '—'} |")


def markdown(meta: dict[str, Any], results: list[PeerResult], goals: list[Ratio]) -> str:
    params = meta["parameters"]
    ns, repeat = params["concurrency"], params["repeat"]
    machine, git = meta["machine"], meta["git"]
    settings = meta.get("hearth_settings", {})
    smoke = " **A smoke run (fewer than 3 repetitions): not a result.**" if repeat < 3 else ""
    lines = [f"# Serving benchmark, {meta['timestamp']}", "",
             f"{meta['model']['name']} on {machine['cpu']} ({machine['usable_cores']} usable "
             f"cores{', ' + machine['accelerator'] if machine.get('accelerator') else ''}), "
             f"{params['threads']} threads, {params['max_tokens']} new tokens per request; "
             f"commit `{git['commit'][:12]}`{' (dirty)' if git['dirty'] else ''}. "
             f"Each figure is the median of {repeat} repetitions with fresh prompts; the "
             "peers' runs are interleaved (every peer once per round, the order rotated each "
             f"round).{smoke} Full figures: `serving-latest.json`.", "",
             "Each serving peer runs as users run it (defaults) and tuned to Hearth's "
             f"settings: flash attention {settings.get('flash_attn', '?')}, "
             f"{'one unified KV pool' if settings.get('kv_unified', True) else 'per-slot KV'}"
             ", no context checkpoints and no host prompt cache (llama-server: "
             "`--kv-unified --swa-checkpoints 0 --cache-ram 0 --flash-attn`), no interrupted "
             "streams (llama-cpp-python server: `--interrupt_requests False`). Hearth's "
             f"settings were read from {settings.get('source', '?')}. The goals are judged "
             "on the tuned peers.", ""]
    tables = [("Aggregate generated tokens/s", "agg_tok_s", ".1f"),
              ("Decode-only tokens/s: while all N streams decode (batched-bench: S_TG)",
               "decode_tok_s", ".1f"),
              ("TTFT p50 (s), client side", "ttft_p50_s", ".3f"),
              ("Inter-token latency p50 (s), client side", "itl_p50_s", ".3f"),
              ("Streams that completed all their tokens", "completed", "d"),
              ("Peak RSS (MB) of the peer's processes, sampled every 50 ms", "peak_rss_mb",
               ".0f")]
    header = "| peer | " + " | ".join(f"N={n}" for n in ns) + " |"
    rule = "|---|" + "---|" * len(ns)
    for title, attr, fmt in tables:
        lines += [f"## {title}", "", header, rule]
        for p in results:
            levels = [p.level(n) for n in ns]
            values = [getattr(lv, attr) if lv else None for lv in levels]
            if all(v is None for v in values):
                continue    # a peer without this figure (batched-bench: no TTFT)
            cells = [_cell(v, fmt) + (f"/{lv.streams}" if lv and v is not None
                                      and attr == "completed" else "")
                     for lv, v in zip(levels, values, strict=True)]
            lines.append(f"| {p.label} | " + " | ".join(cells) + " |")
        lines.append("")
    reference = reference_line(results, ns)
    if reference:
        lines += [reference, ""]
    lines += ["## Goals", "",
              "| goal | target | against the tuned peer (judged) | verdict | "
              "against the peer's defaults |", "|---|---|---|---|---|"]
    lines += [_goal_row(r) for r in goals]
    memory = memory_lines(results)
    if memory:
        lines += ["", "## Memory", ""] + [f"- {line}" for line in memory]
    not_run = [p for p in results if p.status != "ok"]
    if not_run:
        lines += ["", "## Peers not measured (or not at every N)", ""]
        lines += [f"- {p.label}: {p.status}: {p.short_reason()}" for p in not_run]
    return "\n".join(lines) + "\n"


# (figure, y label, panel title), left to right; batched-bench has no TTFT
_PANELS = (("agg_tok_s", "aggregate generated tokens/s", "Throughput"),
           ("decode_tok_s", "tokens/s while all N streams decode", "Decode only"),
           ("ttft_p50_s", "TTFT p50 (s)", "Time to first token"))


def plot(results: list[PeerResult], ns: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(_PANELS), figsize=(6 * len(_PANELS), 4.5))
    for i, p in enumerate(results):
        style = {"color": f"C{i}", "marker": "o", "label": p.key,
                 "linestyle": ":" if p.variant == "defaults" else
                 "--" if p.key == "batched-bench" else "-"}
        for ax, (attr, _, _) in zip(axes, _PANELS, strict=True):
            levels = [lv for lv in p.levels if getattr(lv, attr) is not None]
            if levels:
                ax.plot([lv.n for lv in levels], [getattr(lv, attr) for lv in levels], **style)
    for ax, (_, ylabel, title) in zip(axes, _PANELS, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("concurrent streams N")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_results(out_dir: Path, prefix: str, stamp: str, doc: dict[str, Any], md: str) -> None:
    """PREFIX-STAMP.json (the record), PREFIX-latest.json and PREFIX-latest.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2) + "\n"
    (out_dir / f"{prefix}-{stamp}.json").write_text(text)
    (out_dir / f"{prefix}-latest.json").write_text(text)
    (out_dir / f"{prefix}-latest.md").write_text(md)


def write_all(out_dir: Path, stamp: str, meta: dict[str, Any], results: list[PeerResult]
              ) -> list[Ratio]:
    goals = ratios(results)
    save_results(out_dir, "serving", stamp, to_json(meta, results, goals),
                 markdown(meta, results, goals))
    plot(results, meta["parameters"]["concurrency"], out_dir / "serving-latest.png")
    return goals
