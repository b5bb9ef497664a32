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
    """One goal of the issue, computed from this run's figures."""

    name: str
    value: float | None
    goal: str
    passed: bool | None  # None when a figure it needs is missing from this run
    stretch: str | None = None
    stretch_passed: bool | None = None
    unit: str = "x"

    def line(self) -> str:
        if self.value is None:
            return f"{self.name}: n/a (goal {self.goal}) — not measured in this run"
        verdict = "PASS" if self.passed else "MISS"
        value = f"{self.value:.1f} MB" if self.unit == "MB" else f"{self.value:.3f}"
        text = f"{self.name}: {value} (goal {self.goal}) {verdict}"
        if self.stretch is not None:
            text += f"; stretch {self.stretch} {'PASS' if self.stretch_passed else 'MISS'}"
        return text


def _figure(peers: dict[str, PeerResult], key: str, n: int, attr: str) -> float | None:
    peer = peers.get(key)
    level = peer.level(n) if peer else None
    return getattr(level, attr) if level else None


def _ratio(name: str, num: float | None, den: float | None, goal: float,
           cmp: Callable[[float, float], bool], stretch: float | None = None) -> Ratio:
    sign = ">=" if cmp is operator.ge else "<="
    value = num / den if num is not None and den else None
    return Ratio(name=name, value=value, goal=f"{sign} {goal}",
                 passed=None if value is None else cmp(value, goal),
                 stretch=None if stretch is None else f"{sign} {stretch}",
                 stretch_passed=None if value is None or stretch is None
                 else cmp(value, stretch))


def ratios(results: list[PeerResult]) -> list[Ratio]:
    peers = {p.key: p for p in results}

    def fig(key: str, n: int, attr: str = "agg_tok_s") -> float | None:
        return _figure(peers, key, n, attr)

    out = [_ratio(f"Hearth ÷ llama-server, aggregate tok/s at N={n}", fig("hearth", n),
                  fig("llama-server", n), 1.0, operator.ge, stretch=1.1) for n in (8, 16)]
    out.append(_ratio("Hearth ÷ llama-cpp-python in-process, tok/s at N=1", fig("hearth", 1),
                      fig("llama-cpp-python", 1), 0.95, operator.ge))
    out.append(_ratio("Hearth ÷ llama-server, TTFT p50 at N=8", fig("hearth", 8, "ttft_p50_s"),
                      fig("llama-server", 8, "ttft_p50_s"), 1.0, operator.le))
    hearth = peers.get("hearth")
    beyond = hearth.info.get("rss_beyond_model_kv_peak_mb") if hearth else None
    out.append(Ratio(name="Hearth peak RSS beyond model file + KV", value=beyond,
                     goal="<= 150 MB", passed=None if beyond is None else beyond <= 150,
                     unit="MB"))
    return out


def to_json(meta: dict[str, Any], results: list[PeerResult], goals: list[Ratio]
            ) -> dict[str, Any]:
    return {**meta, "peers": [dataclasses.asdict(p) for p in results],
            "ratios": [{**dataclasses.asdict(r), "line": r.line()} for r in goals]}


def _cell(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def hearth_memory_line(results: list[PeerResult]) -> str | None:
    hearth = next((p for p in results if p.key == "hearth" and p.status == "ok"), None)
    if hearth is None:
        return None
    i = hearth.info
    return (f"Hearth memory: RSS {i['idle_rss_mb']:.0f} MB idle once ready, "
            f"{i['peak_rss_mb']:.0f} MB at peak; model file {i['model_file_mb']:.0f} MB, "
            f"KV cache {i['kv_cache_mb']:.0f} MB (upper bound); beyond model + KV: "
            f"{i['rss_beyond_model_kv_idle_mb']:.0f} MB idle, "
            f"{i['rss_beyond_model_kv_peak_mb']:.0f} MB at peak.")


def markdown(meta: dict[str, Any], results: list[PeerResult], goals: list[Ratio]) -> str:
    ns = meta["parameters"]["concurrency"]
    machine, git = meta["machine"], meta["git"]
    lines = [f"# Serving benchmark, {meta['timestamp']}", "",
             f"{meta['model']['name']} on {machine['cpu']} ({machine['usable_cores']} usable "
             f"cores), {meta['parameters']['threads']} threads, "
             f"{meta['parameters']['max_tokens']} new tokens per request"
             f"{' (quick smoke run)' if meta['parameters']['quick'] else ''}; commit "
             f"`{git['commit'][:12]}`{' (dirty)' if git['dirty'] else ''}. "
             "Full figures: `serving-latest.json`.", ""]
    tables = [("Aggregate generated tokens/s", "agg_tok_s", ".1f"),
              ("TTFT p50 (s), client side", "ttft_p50_s", ".3f"),
              ("Streams that completed all their tokens", "completed", "d")]
    header = "| peer | " + " | ".join(f"N={n}" for n in ns) + " |"
    rule = "|---|" + "---|" * len(ns)
    for title, attr, fmt in tables:
        lines += [f"## {title}", "", header, rule]
        for p in results:
            if not p.levels or (attr != "agg_tok_s" and p.key == "batched-bench"):
                continue
            cells = []
            for n in ns:
                level = p.level(n)
                value = getattr(level, attr) if level else None
                cells.append(_cell(value, fmt) + (f"/{level.streams}" if level and value
                                                  is not None and attr == "completed" else ""))
            lines.append(f"| {p.label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Goals", ""] + [f"- {r.line()}" for r in goals]
    memory = hearth_memory_line(results)
    if memory:
        lines += ["", memory]
    not_run = [p for p in results if p.status != "ok"]
    if not_run:
        lines += ["", "## Peers not measured (or not at every N)", ""]
        lines += [f"- {p.label}: {p.status}: {p.short_reason()}" for p in not_run]
    return "\n".join(lines) + "\n"


def plot(results: list[PeerResult], ns: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (tok_ax, ttft_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, p in enumerate(results):
        levels = [lv for lv in p.levels if lv.agg_tok_s is not None]
        if not levels:
            continue
        style = {"color": f"C{i}", "marker": "o", "label": p.label,
                 "linestyle": "--" if p.key == "batched-bench" else "-"}
        tok_ax.plot([lv.n for lv in levels], [lv.agg_tok_s for lv in levels], **style)
        ttft = [lv for lv in levels if lv.ttft_p50_s is not None]
        if ttft:
            ttft_ax.plot([lv.n for lv in ttft], [lv.ttft_p50_s for lv in ttft], **style)
    for ax, ylabel in ((tok_ax, "aggregate generated tokens/s"), (ttft_ax, "TTFT p50 (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("concurrent streams N")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    tok_ax.set_title("Throughput")
    ttft_ax.set_title("Time to first token")
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
