"""`hearth energy report`: totals per model and per adapter, from the audit
log's request records (each carries the energy the accountant attributed to
it, its source and its gCO2e, computed with the grid intensity of the
windows it ran in).  Idle energy belongs to no request and is not in the
log: Prometheus' hearth_idle_energy_joules_total counts it."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Total:
    requests: int = 0
    joules: float = 0.0
    co2e_grams: float = 0.0
    tokens: int = 0                     # prompt tokens computed + generated
    sources: set[str] = field(default_factory=set)

    def add(self, entry: Mapping[str, Any]) -> None:
        self.requests += 1
        self.joules += float(entry.get("energy_joules", 0.0))
        self.co2e_grams += float(entry.get("co2e_grams", 0.0))
        self.tokens += (int(entry.get("prompt_tokens", 0)) - int(entry.get("cached_tokens", 0))
                        + int(entry.get("completion_tokens", 0)))
        self.sources.add(str(entry["energy_source"]))

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "joules": self.joules,
                "co2e_grams": self.co2e_grams, "tokens": self.tokens,
                "joules_per_token": self.joules / self.tokens if self.tokens else None,
                "source": "+".join(sorted(self.sources))}


@dataclass
class EnergyReport:
    models: dict[str, Total] = field(default_factory=dict)
    adapters: dict[str, Total] = field(default_factory=dict)   # "model@adapter"
    total: Total = field(default_factory=Total)
    unaccounted: int = 0        # request records without energy (accounting off)

    def to_json(self) -> dict[str, Any]:
        return {"models": {k: v.to_json() for k, v in sorted(self.models.items())},
                "adapters": {k: v.to_json() for k, v in sorted(self.adapters.items())},
                "total": self.total.to_json(), "requests_without_energy": self.unaccounted}


def build_report(entries: Iterable[Mapping[str, Any]]) -> EnergyReport:
    report = EnergyReport()
    for entry in entries:
        if entry.get("type") != "request" or "model" not in entry:
            continue
        if not entry.get("energy_source"):
            report.unaccounted += 1
            continue
        model = str(entry["model"])
        report.models.setdefault(model, Total()).add(entry)
        if entry.get("adapter"):
            report.adapters.setdefault(f"{model}@{entry['adapter']}", Total()).add(entry)
        report.total.add(entry)
    return report


def format_report(report: EnergyReport) -> str:
    lines = [f"{'':32} {'requests':>9} {'joules':>12} {'J/token':>9} {'gCO2e':>10}  source"]

    def row(name: str, t: Total) -> None:
        jpt = f"{t.joules / t.tokens:.4g}" if t.tokens else "-"
        lines.append(f"{name:32} {t.requests:>9} {t.joules:>12.4g} {jpt:>9} "
                     f"{t.co2e_grams:>10.4g}  {'+'.join(sorted(t.sources))}")

    for name, t in sorted(report.models.items()):
        row(name, t)
    for name, t in sorted(report.adapters.items()):
        row("  " + name, t)
    row("total", report.total)
    if any("estimate" in s for s in report.total.sources):
        lines.append("estimate: CPU time x [energy] cpu_watts, not a measurement "
                     "(docs/energy.md)")
    if report.unaccounted:
        lines.append(f"{report.unaccounted} request(s) without energy (accounting was off)")
    return "\n".join(lines)
