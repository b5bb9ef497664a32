"""Federated aggregation: what secure aggregation costs against plain FedAvg.

    python -m benchmarks.federation [--sites 100] [--size N] [--dropout 0.1] [--quick]

One round with every site simulated in this process, one after another, on
the project's own code (runtime/federation): for each update size,

* plain FedAvg (the peer every ratio is against): each site sends its float32
  update and token count; the coordinator decodes them and runs `fedavg`;
* the air-gapped path: each site seals its update (`seal_update`: signed,
  encrypted to the coordinator); the coordinator opens them
  (`UpdateInbox.open_update`) and runs `fedavg`;
* secure aggregation (`SecAggSite`, `SecAggCoordinator`) with no site
  dropping and with `--dropout` of the sites dropping after they shared their
  keys (the costly case: the coordinator rebuilds their pairwise masks).
  Each site masks [tokens x update, tokens], so the sum gives the
  token-weighted FedAvg mean; the benchmark asserts (untimed) that it equals
  plain `fedavg` over the same sites.

Times: each client step per site (median over sites), each coordinator step
(median of up to --repeat runs of it on the same input, within 10 s a step),
and the round as it would run with the sites in parallel (the sum of the
client steps' medians and the coordinator steps).  Bytes: the messages as
they would go on the wire, length-prefixed (see `wire_bytes`).  The new
global adapter sent back to the sites is the same in every scenario and is
not counted.

Update sizes: FFA-LoRA (only the B matrices train) of rank 8 on Gemma 3
270M's attention and FFN projections, and a small update where the fixed
costs (key agreement, secret sharing) dominate.

Writes benchmarks/results/federation-<stamp>.json and federation-latest.{json,md}.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from benchmarks.report import save_results
from benchmarks.serving import describe_machine
from runtime.federation.aggregate import SiteUpdate, fedavg
from runtime.federation.secagg import (
    AdvertiseKeys,
    EncryptedShares,
    MaskedInput,
    SecAggCoordinator,
    SecAggSite,
    UnmaskResponse,
)
from runtime.federation.update_bundle import UpdateInbox, seal_update

# Gemma 3 270M: 18 layers, n_embd 640; output widths of the adapted
# projections q, k, v, o, ffn gate, up, down.
GEMMA3_270M_LAYERS = 18
GEMMA3_270M_OUTPUTS = {"q": 1024, "k": 256, "v": 256, "o": 640, "gate": 2048, "up": 2048,
                       "down": 640}
LORA_RANK = 8
SMALL_SIZE = 16_384
CLIP_NORM = 1.0
FEDERATION, ROUND = "bench", 1
REPEAT_BUDGET_S = 10.0

T = TypeVar("T")


def ffa_lora_size(rank: int = LORA_RANK) -> int:
    """Trainable values of FFA-LoRA: B (out x rank) of every adapted projection."""
    return GEMMA3_270M_LAYERS * rank * sum(GEMMA3_270M_OUTPUTS.values())


# ---- the wire ------------------------------------------------------------------
# Length-prefixed: a string is u16 length + UTF-8, a blob u32 length + bytes, a
# list or map a u32 count then its items, a Shamir share u32 index + 66 bytes.

def _s(name: str) -> int:
    return 2 + len(name.encode())


def _share_map(shares: dict[str, tuple[int, int]]) -> int:
    return 4 + sum(_s(site) + 4 + 66 for site in shares)


def wire_bytes(msg: AdvertiseKeys | EncryptedShares | MaskedInput | UnmaskResponse) -> int:
    if isinstance(msg, AdvertiseKeys):
        return _s(msg.site) + 2 * (4 + 32)
    if isinstance(msg, EncryptedShares):
        return _s(msg.sender) + 4 + sum(_s(to) + 4 + len(blob)
                                        for to, blob in msg.ciphertexts.items())
    if isinstance(msg, MaskedInput):
        return _s(msg.site) + 4 + msg.y.astype("<u8", copy=False).nbytes
    return _s(msg.site) + _share_map(msg.b_shares) + _share_map(msg.s_shares)


def _names(names: list[str]) -> int:
    return 4 + sum(map(_s, names))


def encode_plain(u: SiteUpdate) -> bytes:
    """Plain FedAvg's message: site, tokens, the float32 update."""
    name = u.site.encode()
    vec = np.ascontiguousarray(u.delta, dtype="<f4")
    return struct.pack(">H", len(name)) + name + struct.pack(">QI", u.tokens, vec.size) + \
        vec.tobytes()


def decode_plain(blob: bytes) -> SiteUpdate:
    (n,) = struct.unpack_from(">H", blob)
    tokens, size = struct.unpack_from(">QI", blob, 2 + n)
    start = 2 + n + 12
    return SiteUpdate(blob[2:2 + n].decode(),
                      np.frombuffer(blob, dtype="<f4", count=size, offset=start), tokens)


# ---- measurement ---------------------------------------------------------------

def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _repeated(fn: Callable[[], T], repeat: int, budget_s: float = REPEAT_BUDGET_S
              ) -> tuple[T, float]:
    """A coordinator step (which can be run again on the same input): the
    first result and the median time of up to `repeat` runs, fewer once
    `budget_s` is spent (one site's client step is timed once, but over every
    site, so its median needs no repeats)."""
    out, first = _timed(fn)
    times = [first]
    while len(times) < repeat and sum(times) < budget_s:
        times.append(_timed(fn)[1])
    return out, statistics.median(times)


@dataclass
class Scenario:
    name: str
    size: int
    sites: int
    dropped: int = 0
    client_s: dict[str, float] = field(default_factory=dict)       # step -> median over sites
    coordinator_s: dict[str, float] = field(default_factory=dict)  # step -> seconds
    bytes_up_per_site: int = 0          # median over the sites that sent everything
    bytes_down_per_site: int = 0
    bytes_into_coordinator: int = 0
    bytes_out_of_coordinator: int = 0
    max_abs_error: float = 0.0          # against plain fedavg over the same sites
    wall_s: float = 0.0                 # this scenario, simulation and checks included

    @property
    def client_total_s(self) -> float:
        return sum(self.client_s.values())

    @property
    def coordinator_total_s(self) -> float:
        return sum(self.coordinator_s.values())

    @property
    def round_s(self) -> float:
        """The round's compute with the sites in parallel."""
        return self.client_total_s + self.coordinator_total_s

    def to_json(self, base: Scenario | None) -> dict[str, Any]:
        doc = {**asdict(self), "client_total_s": self.client_total_s,
               "coordinator_total_s": self.coordinator_total_s, "round_s": self.round_s}
        if base is not None:
            doc["vs_plain"] = {
                "round_time": self.round_s / base.round_s,
                "coordinator_time": self.coordinator_total_s / base.coordinator_total_s,
                "bytes_up_per_site": self.bytes_up_per_site / base.bytes_up_per_site,
                "bytes_into_coordinator": self.bytes_into_coordinator
                / base.bytes_into_coordinator}
        return doc


def _medians(per_site: dict[str, list[float]]) -> dict[str, float]:
    return {step: statistics.median(v) for step, v in per_site.items() if v}


def make_updates(n_sites: int, size: int, seed: int) -> list[SiteUpdate]:
    """Clipped float32 updates (L2 norm 0.5-1.0) and token counts."""
    rng = np.random.default_rng([seed, size])
    out = []
    for i in range(n_sites):
        v = rng.normal(0, 1, size)
        v *= rng.uniform(0.5, 1.0) * CLIP_NORM / np.linalg.norm(v)
        out.append(SiteUpdate(f"site-{i:03d}", v.astype(np.float32),
                              int(rng.integers(2_000, 200_000))))
    return out


def plain(updates: list[SiteUpdate], size: int, repeat: int) -> tuple[Scenario, np.ndarray]:
    sc = Scenario("plain FedAvg (no secagg)", size, len(updates))
    t0 = time.perf_counter()
    sent, encode = [], []
    for u in updates:
        blob, dt = _timed(partial(encode_plain, u))
        sent.append(blob)
        encode.append(dt)
    sc.client_s = _medians({"encode": encode})
    received, sc.coordinator_s["decode"] = _repeated(lambda: [decode_plain(b) for b in sent],
                                                       repeat)
    (mean, rejected), sc.coordinator_s["fedavg"] = _repeated(
        lambda: fedavg(received, size, CLIP_NORM), repeat)
    assert not rejected
    sc.bytes_up_per_site = int(statistics.median(map(len, sent)))
    sc.bytes_into_coordinator = sum(map(len, sent))
    sc.wall_s = time.perf_counter() - t0
    return sc, mean


def bundle(updates: list[SiteUpdate], size: int, reference: np.ndarray, repeat: int
           ) -> Scenario:
    sc = Scenario("air-gapped bundle (signed, encrypted)", size, len(updates))
    t0 = time.perf_counter()
    coordinator = X25519PrivateKey.generate()
    keys = {u.site: Ed25519PrivateKey.generate() for u in updates}   # enrollment, untimed
    sent, seal = [], []
    for u in updates:
        blob, dt = _timed(partial(seal_update, u, FEDERATION, ROUND, keys[u.site],
                                  coordinator.public_key()))
        sent.append(blob)
        seal.append(dt)
    sc.client_s = _medians({"seal": seal})
    enrolled = {s: k.public_key() for s, k in keys.items()}

    def open_all() -> list[SiteUpdate]:
        inbox = UpdateInbox(FEDERATION, ROUND, coordinator, enrolled, size)  # a fresh round
        return [inbox.open_update(b) for b in sent]
    opened, sc.coordinator_s["open"] = _repeated(open_all, repeat)
    (mean, rejected), sc.coordinator_s["fedavg"] = _repeated(
        lambda: fedavg(opened, size, CLIP_NORM), repeat)
    assert not rejected
    np.testing.assert_array_equal(mean, reference)
    sc.bytes_up_per_site = int(statistics.median(map(len, sent)))
    sc.bytes_into_coordinator = sum(map(len, sent))
    sc.wall_s = time.perf_counter() - t0
    return sc


def secagg(updates: list[SiteUpdate], size: int, threshold: int, n_dropped: int,
           seed: int, repeat: int) -> Scenario:
    n = len(updates)
    sc = Scenario(f"secure aggregation, {n_dropped} of {n} dropped" if n_dropped
                  else "secure aggregation, none dropped", size, n, n_dropped)
    t0 = time.perf_counter()
    rng = np.random.default_rng([seed, n, n_dropped])
    dropped = {updates[i].site for i in rng.choice(n, n_dropped, replace=False)}
    round_id = b"bench-round-1"
    steps: dict[str, list[float]] = {"advertise": [], "share": [], "mask": [], "unmask": []}
    up: dict[str, int] = {u.site: 0 for u in updates}
    down: dict[str, int] = {u.site: 0 for u in updates}
    coord = SecAggCoordinator(round_id, threshold)
    sites: dict[str, SecAggSite] = {}
    keys = []
    for u in updates:
        def advertise(site: str = u.site) -> AdvertiseKeys:
            sites[site] = SecAggSite(site, round_id, threshold)   # its keys are drawn here
            return sites[site].advertise()
        msg, dt = _timed(advertise)
        steps["advertise"].append(dt)
        up[u.site] += wire_bytes(msg)
        keys.append(msg)
    roster, sc.coordinator_s["collect_keys"] = _repeated(lambda: coord.collect_keys(keys),
                                                             repeat)
    roster_bytes = 4 + sum(map(wire_bytes, roster))
    shares = []
    for u in updates:
        down[u.site] += roster_bytes
        enc, dt = _timed(partial(sites[u.site].share, roster))
        steps["share"].append(dt)
        up[u.site] += wire_bytes(enc)
        shares.append(enc)
    inbox, sc.coordinator_s["route"] = _repeated(lambda: coord.route(shares), repeat)
    masked = []
    for u in updates:
        down[u.site] += 4 + sum(_s(sender) + 4 + len(b) for sender, b in inbox[u.site].items())
        if u.site in dropped:
            continue

        def mask(u: SiteUpdate = u) -> MaskedInput:
            x = np.append(u.delta.astype(np.float64) * u.tokens, float(u.tokens))
            return sites[u.site].mask(x, inbox[u.site])
        m, dt = _timed(mask)
        steps["mask"].append(dt)
        up[u.site] += wire_bytes(m)
        masked.append(m)
    (survivors, gone), sc.coordinator_s["collect_masked"] = _repeated(
        lambda: coord.collect_masked(masked), repeat)
    assert gone == sorted(dropped)
    request_bytes = _names(survivors) + _names(gone)
    responses = []
    for site in survivors:
        down[site] += request_bytes
        r, dt = _timed(partial(sites[site].unmask, survivors, gone))
        steps["unmask"].append(dt)
        up[site] += wire_bytes(r)
        responses.append(r)

    def finish() -> np.ndarray:
        total, _ = coord.finish(responses)
        return total[:-1] / total[-1]
    mean, sc.coordinator_s["unmask_and_sum"] = _repeated(finish, repeat)
    sc.client_s = _medians(steps)
    sc.bytes_up_per_site = int(statistics.median(up[s] for s in survivors))
    sc.bytes_down_per_site = int(statistics.median(down[s] for s in survivors))
    sc.bytes_into_coordinator = sum(up.values())
    sc.bytes_out_of_coordinator = sum(down.values())
    # The check, untimed: the secure sum gives plain FedAvg's mean over the survivors.
    expected, _ = fedavg([u for u in updates if u.site not in dropped], size, CLIP_NORM)
    np.testing.assert_allclose(mean, expected, rtol=1e-5, atol=1e-7)
    sc.max_abs_error = float(np.max(np.abs(mean - expected)))
    sc.wall_s = time.perf_counter() - t0
    return sc


def run_size(size: int, n_sites: int, threshold: int, dropout: float, seed: int,
             repeat: int) -> list[dict[str, Any]]:
    updates = make_updates(n_sites, size, seed)
    print(f"size {size}: plain FedAvg ...", file=sys.stderr)
    base, reference = plain(updates, size, repeat)
    print(f"size {size}: air-gapped bundles ...", file=sys.stderr)
    rows = [base.to_json(None), bundle(updates, size, reference, repeat).to_json(base)]
    for n_dropped in sorted({0, round(dropout * n_sites)}):
        print(f"size {size}: secure aggregation, {n_dropped} dropped ...", file=sys.stderr)
        rows.append(secagg(updates, size, threshold, n_dropped, seed, repeat).to_json(base))
    return rows


# ---- report --------------------------------------------------------------------

def _bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def _secs(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def markdown(result: dict[str, Any]) -> str:
    m, p = result["machine"], result["parameters"]
    lines = [f"# Federated aggregation, {result['timestamp']}", "",
             f"{m['cpu']} ({m['usable_cores']} usable cores); {p['sites']} simulated sites in "
             f"one process, one round per scenario, secure-aggregation threshold "
             f"{p['threshold']}{' (quick run)' if p['quick'] else ''}; commit "
             f"`{(m['git_commit'] or '?')[:12]}`{' (dirty)' if m['git_dirty'] else ''}. "
             f"Client steps: median over the sites; coordinator steps: median of up to "
             f"{p['repeat']} runs. The whole run took {result['elapsed_s']:.0f} s (1-minute "
             f"load average {result['loadavg_1m']['start']:.1f} at the start, "
             f"{result['loadavg_1m']['end']:.1f} at the end). Ratios are against plain FedAvg "
             "of the same size in the same run. Full figures: `federation-latest.json`.",
             ""]
    for size in result["sizes"]:
        lines += [f"## {size['label']}: {size['size']:,} values "
                  f"({_bytes(4 * size['size'])} as float32)", "",
                  "| scenario | client, per site (median) | coordinator | round, sites in "
                  "parallel | vs plain | bytes sent per site | vs plain | bytes into "
                  "coordinator | vs plain |", "|---|---|---|---|---|---|---|---|---|"]
        for r in size["scenarios"]:
            v = r.get("vs_plain") or {"round_time": 1.0, "bytes_up_per_site": 1.0,
                                      "bytes_into_coordinator": 1.0}
            lines.append(f"| {r['name']} | {_secs(r['client_total_s'])} | "
                         f"{_secs(r['coordinator_total_s'])} | {_secs(r['round_s'])} | "
                         f"{v['round_time']:.1f}x | {_bytes(r['bytes_up_per_site'])} | "
                         f"{v['bytes_up_per_site']:.2f}x | "
                         f"{_bytes(r['bytes_into_coordinator'])} | "
                         f"{v['bytes_into_coordinator']:.2f}x |")
        lines += ["", "Secure aggregation step by step (client: median per site; "
                  "bytes received per site from the coordinator in the last column):", "",
                  "| scenario | advertise | share | mask | unmask | collect keys | route | "
                  "collect masked | unmask and sum | bytes received per site | "
                  "max abs error vs fedavg |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in size["scenarios"]:
            if "unmask_and_sum" not in r["coordinator_s"]:
                continue
            c, k = r["client_s"], r["coordinator_s"]
            lines.append(
                f"| {r['name']} | " + " | ".join(_secs(c[s]) for s in
                                                   ("advertise", "share", "mask", "unmask"))
                + " | " + " | ".join(_secs(k[s]) for s in
                                     ("collect_keys", "route", "collect_masked",
                                      "unmask_and_sum"))
                + f" | {_bytes(r['bytes_down_per_site'])} | {r['max_abs_error']:.1e} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.federation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sites", type=int, default=100)
    p.add_argument("--size", type=int, default=ffa_lora_size(),
                   help="update length (default: FFA-LoRA rank 8 on Gemma 3 270M, %(default)s)")
    p.add_argument("--small-size", type=int, default=SMALL_SIZE,
                   help="the small update's length; 0 leaves it out (default %(default)s)")
    p.add_argument("--dropout", type=float, default=0.1,
                   help="share of sites that drop after sharing their keys (default 0.1)")
    p.add_argument("--threshold", type=int, default=None,
                   help="secure aggregation's threshold (default: two thirds of the sites)")
    p.add_argument("--quick", action="store_true", help="10 sites")
    p.add_argument("--repeat", type=int, default=5,
                   help="runs of each coordinator step, median reported, while under "
                   f"{REPEAT_BUDGET_S:.0f} s a step (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    n_sites = 10 if args.quick else args.sites
    threshold = args.threshold or math.ceil(2 * n_sites / 3)
    if n_sites < 2 or args.size < 1 or not 0 <= args.dropout < 1:
        p.error("need at least 2 sites, a positive size and a dropout in [0, 1)")
    if n_sites - round(args.dropout * n_sites) < threshold:
        p.error(f"with {args.dropout:.0%} dropped, fewer sites than the threshold {threshold} "
                "would remain")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    sizes = [("FFA-LoRA rank 8, Gemma 3 270M attention + FFN"
              if args.size == ffa_lora_size() else "update of --size", args.size)]
    if args.small_size:
        sizes.append(("small update", args.small_size))
    results = [{"label": label, "size": size,
                "scenarios": run_size(size, n_sites, threshold, args.dropout, args.seed,
                                      args.repeat)}
               for label, size in sizes]
    result = {"schema": "hearth-federation-benchmark/1",
              "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": describe_machine(),
              "parameters": {"sites": n_sites, "threshold": threshold, "dropout": args.dropout,
                             "seed": args.seed, "quick": args.quick, "repeat": args.repeat,
                             "clip_norm": CLIP_NORM,
                             "lora": {"rank": LORA_RANK, "layers": GEMMA3_270M_LAYERS,
                                      "outputs": GEMMA3_270M_OUTPUTS}},
              "elapsed_s": time.perf_counter() - t0,
              "loadavg_1m": {"start": load_before[0], "end": os.getloadavg()[0]},
              "sizes": results}
    save_results(args.out, "federation", stamp, result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
