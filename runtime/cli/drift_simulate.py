"""`hearth drift simulate`: the drift watch and the federation's answer to
it, on real daemons on loopback (docs/drift.md, "The whole loop in
simulation").

Every site is a `hearth serve` process with the drift watch on, its own
sealed state directory and master key, set up with the commands an operator
runs (keys init, data add, fed init / enroll / issue / join, as `hearth fed
simulate` does).  Each site's traffic is real gRPC generate requests, one
stream per site, of notes from its home domain of the synthetic clinical
corpus (runtime/federation/corpus.py: the site's own specialties and house
style).  After `requests_before` requests a fraction `shift` of the traffic
moves to a new domain: notes of a specialty that no site has (the corpus's
site index `sites + 1`), so the shift is one of content, not of format.

After every request the harness reads the site's drift summary (Models.Get)
once the drift worker has seen that request, so an alarm's onset is known to
the request:

* a false alarm is an alarm onset before the shift (with `null`, any onset);
* a site's detection delay is the number of requests from the shift to its
  first alarm onset after it (None when none comes within `requests_after`).

With the federation (the default; drift_loop.py), the daemons send signed
alarms to a coordinator service, whose drift trigger starts a round; the
sites train on the traffic their daemons kept, the gate judges the
candidate, and the daemons apply a promoted release themselves, hot-swapped
while their streams run (a second, longer stream per site from the round's
start on makes sure some span the swap).  Requests then ask for the
federation's adapter.

New-domain perplexity is measured by `hearth fed evaluate` on held-out
new-domain notes (a sealed data set at each site, never sent as traffic)
under what the site serves: the base model before, the applied release, if
any, after.  The last stdout line of the CLI is the JSON of `run()`.

It lives with the command line, not in runtime/drift/, because it drives
every layer from above: the client, the federation's corpus and commands,
the daemon as a process.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from runtime.cli.drift_loop import ADAPTER, FederationLoop, init_args
from runtime.cli.drift_loop import site_toml as federation_tables
from runtime.errors import ConfigError, InternalError

log = logging.getLogger("hearth.drift")

MODEL_NAME = "clinic"
TRAFFIC_POOL = 400          # distinct home-domain notes a site's traffic is drawn from
NEW_POOL = 400              # distinct new-domain notes the shifted traffic is drawn from
NEW_HELDOUT = 40            # new-domain notes kept for perplexity, never sent
MAX_SITES = 6               # the corpus has 8 specialties; the new one must be no site's
MAX_FAILURES = 50           # a site's traffic stops after this many failed streams
LONG_TOKENS = 48            # the second stream's generations, long enough to span a swap


@dataclass(frozen=True)
class DriftSimulationOptions:
    sites: int = 3
    model: str | None = None
    shift: float = 0.2
    seed: int = 0
    null: bool = False
    requests_before: int = 300       # per site, before the shift (reference included)
    requests_after: int = 600        # per site: the longest wait for an alarm after the shift
    after_swap: int = 30             # per site, requests under the release once swapped in
    federation: bool = True          # the coordinator, rounds and auto-apply
    workdir: str | None = None
    reference_size: int = 200        # the daemons' [drift] table: sized for a short run
    window: int = 50
    stride: int = 5
    ert_requests: int = 10_000
    max_tokens: int = 4
    threads: int = 1
    timeout_s: float = 1800.0

    def check(self) -> None:
        if not 2 <= self.sites <= MAX_SITES:
            raise ConfigError(f"--sites: 2..{MAX_SITES} (the new domain must be a specialty "
                              f"no site has), got {self.sites}")
        if not 0.0 < self.shift <= 1.0 and not self.null:
            raise ConfigError(f"--shift: in (0, 1], got {self.shift}")
        if self.requests_before < self.reference_size + self.window:
            raise ConfigError(f"--requests-before: at least reference ({self.reference_size})"
                              f" + window ({self.window}), so the watch is armed before the "
                              f"shift; got {self.requests_before}")
        if self.requests_after < 1 or self.after_swap < 0:
            raise ConfigError("--requests-after: at least 1; --after-swap: at least 0")


@dataclass
class SiteRun:
    """One site's daemon and what its traffic saw."""

    name: str
    index: int
    addr: str = ""
    proc: subprocess.Popen[bytes] | None = None
    sent: int = 0                   # requests served (both streams)
    new_sent: int = 0               # of them, from the new domain
    new_before_training: int | None = None
    long_done: int = 0              # the second stream's requests finished
    across_swap: int = 0            # of them, begun before the swap and ended after it
    failed_streams: int = 0
    onsets: list[int] = field(default_factory=list)     # `sent` at each alarm onset
    versions: list[str] = field(default_factory=list)   # drift versions seen, in order
    swapped_at: int | None = None   # `sent` when the release was first asked for
    error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def shifted_at(self, o: DriftSimulationOptions, sent: int) -> bool:
        return not o.null and sent > o.requests_before


# ---- the corpus -----------------------------------------------------------------------

def home_pool(index: int, sites: int, seed: int) -> list[str]:
    """Fresh notes of a site's own distribution (not its training notes)."""
    from runtime.federation.corpus import generate_site_corpus

    notes, _ = generate_site_corpus(index, sites, TRAFFIC_POOL, 0, seed=seed + 1000)
    return notes


def new_domain(sites: int, seed: int) -> tuple[list[str], list[str]]:
    """(traffic pool, held-out notes) of the new domain: the notes a site of
    corpus index `sites + 1` would write; its specialty is no site's own or
    secondary one (site k has specialties k and k + 1)."""
    from runtime.federation.corpus import generate_site_corpus

    j = sites + 1
    return generate_site_corpus(j, j + 1, NEW_POOL, NEW_HELDOUT, seed=seed + 2000)


# ---- setup: the operator's commands -------------------------------------------------

def setup(o: DriftSimulationOptions, root: Path) -> tuple[Any, list[Any], str]:
    """The coordinator's and the sites' sealed state, enrolled in a federation;
    each site holds its training notes, its held-out notes and the new
    domain's held-out notes (`newdomain`) as sealed data sets."""
    from runtime.federation.corpus import write_corpus
    from runtime.federation.simulate import Party
    from runtime.models.tiny import write_tiny_model

    model = o.model or str(write_tiny_model(root / "tiny.gguf", output_scale=0.1))
    corpus = root / "corpus"
    write_corpus(corpus, o.sites, seed=o.seed)
    _, new_heldout = new_domain(o.sites, o.seed)
    newdomain = root / "newdomain-heldout.txt"
    newdomain.write_text("".join(f"{n}\n" for n in new_heldout), encoding="utf-8")
    coordinator = Party(root, "coordinator", o.timeout_s)
    coordinator.run(*init_args(model, o.sites))
    sites = []
    for i in range(o.sites):
        site = Party(root, f"site-{i}", o.timeout_s)
        site.run("data", "add", "train", str(corpus / f"site-{i}" / "train.txt"))
        site.run("data", "add", "heldout", str(corpus / f"site-{i}" / "heldout.txt"))
        site.run("data", "add", "newdomain", str(newdomain))
        request, kit = root / f"site-{i}.request.json", root / f"site-{i}.kit.json"
        site.run("fed", "enroll", "--site", site.name, "--out", str(request))
        coordinator.run("fed", "issue", str(request), "--out", str(kit))
        site.run("fed", "join", str(kit), "--base-model", model)
        sites.append(site)
    return coordinator, sites, model


def site_toml(o: DriftSimulationOptions, coordinator: str | None) -> str:
    """A site's hearth.toml: the [drift] table (every request sampled, so the
    harness counts requests; a reference and window small enough for a short
    run) and, with the federation, its [federation] table."""
    drift = (f"[drift]\nenabled = true\nsample_fraction = 1.0\n"
             f"reference_size = {o.reference_size}\nwindow = {o.window}\n"
             f"stride = {o.stride}\nert_requests = {o.ert_requests}\n")
    return drift + (federation_tables(coordinator, MODEL_NAME) if coordinator else "")


def start_daemon(o: DriftSimulationOptions, root: Path, site: Any, model: str,
                 run: SiteRun, coordinator: str | None) -> None:
    config = root / f"{site.name}.toml"
    config.write_text(site_toml(o, coordinator))
    ready = root / f"{site.name}.ready.json"
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    log_file = (logs / f"{site.name}-daemon.log").open("w")
    argv = [sys.executable, "-m", "runtime.cli.main", "serve", "--config", str(config),
            "--model", f"{MODEL_NAME}={model}", "--listen", "127.0.0.1:0",
            "--listen", f"unix:{root / (site.name + '.sock')}",
            "--parallel", "4", "--ctx", "8192", "--threads", str(o.threads),
            "--state-dir", str(site.dir), "--key-file", str(site.key),
            "--ready-file", str(ready)]
    run.proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    while not ready.exists():
        if run.proc.poll() is not None or time.monotonic() > deadline:
            raise InternalError(f"{site.name}: daemon did not start: "
                                + (logs / f"{site.name}-daemon.log").read_text()[-3000:])
        time.sleep(0.05)
    addresses = json.loads(ready.read_text())["addresses"]
    run.addr = next(a for a in addresses if not a.startswith("unix:"))


def stop_process(proc: subprocess.Popen[Any] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---- traffic ------------------------------------------------------------------------

@dataclass
class Traffic:
    """What every site's streams share: the pools, the stop signal, and
    whether the sites' requests ask for the federation's adapter."""

    o: DriftSimulationOptions
    new: list[str]
    stop: threading.Event = field(default_factory=threading.Event)
    long_streams: threading.Event = field(default_factory=threading.Event)
    adapter: dict[str, str] = field(default_factory=dict)    # site -> adapter once swapped

    def pick(self, run: SiteRun, rng: random.Random, home: list[str]) -> tuple[str, bool]:
        """The next prompt and whether it is from the new domain."""
        shifted = run.shifted_at(self.o, run.sent + 1) and rng.random() < self.o.shift
        return rng.choice(self.new if shifted else home), shifted


def drift_state(client: Any) -> tuple[int, bool, str]:
    """(requests observed over all versions, any version alarmed, the newest
    version's name) from the daemon's drift summaries."""
    summaries = list(client.get_model(MODEL_NAME).drift)
    observed = sum(int(d.observed) for d in summaries)
    alarm = any(d.alarm for d in summaries)
    newest = summaries[-1].version if summaries else ""
    return observed, alarm, newest


def wait_observed(client: Any, want: int, timeout_s: float = 30.0) -> tuple[int, bool, str]:
    """The drift summary once the worker has observed `want` requests."""
    deadline = time.monotonic() + timeout_s
    while True:
        observed, alarm, version = drift_state(client)
        if observed >= want or time.monotonic() > deadline:
            return observed, alarm, version
        time.sleep(0.005)


def swapped(client: Any) -> bool:
    return ADAPTER in client.get_model(MODEL_NAME).adapters


def drive_site(t: Traffic, run: SiteRun, home: list[str], until_alarm: bool) -> None:
    """The site's main stream: one request at a time, each awaited and then
    its drift verdict read.  Without the federation (`until_alarm`) it ends
    at the first alarm after the shift; with it, when told to stop."""
    from runtime.client import HearthClient

    o = t.o
    rng = random.Random(f"hearth-drift-sim/prompts/{o.seed}/{run.index}")
    cap = o.requests_before + o.requests_after
    alarmed = False
    try:
        with HearthClient(run.addr, timeout=120.0) as client:
            while not t.stop.is_set() and (run.sent < cap or not until_alarm):
                if o.null and run.sent >= cap:
                    return
                prompt, shifted = t.pick(run, rng, home)
                if run.name not in t.adapter and t.o.federation and swapped(client):
                    t.adapter[run.name] = ADAPTER
                    run.swapped_at = run.sent
                try:
                    client.complete(prompt, MODEL_NAME, max_tokens=o.max_tokens,
                                    adapter=t.adapter.get(run.name, ""))
                except grpc.RpcError as exc:
                    run.failed_streams += 1
                    log.warning("%s: a request failed: %s", run.name, exc.code())
                    if run.failed_streams > MAX_FAILURES:
                        raise
                    continue
                with run.lock:
                    run.sent += 1
                    run.new_sent += shifted
                    want = run.sent
                _, alarm, version = wait_observed(client, want)
                if version and (not run.versions or run.versions[-1] != version):
                    run.versions.append(version)
                if alarm and not alarmed:
                    run.onsets.append(run.sent)
                alarmed = alarm
                if until_alarm and run.onsets and run.shifted_at(o, run.onsets[-1]):
                    return
    except Exception as exc:        # reported, not raised: the other sites go on
        run.error = f"{type(exc).__name__}: {exc}"
        log.exception("%s: traffic stopped", run.name)


def drive_long(t: Traffic, run: SiteRun, home: list[str]) -> None:
    """The site's second stream, from the round's start on: longer
    generations, so that some are running when the release is swapped in."""
    from runtime.client import HearthClient

    rng = random.Random(f"hearth-drift-sim/long/{t.o.seed}/{run.index}")
    t.long_streams.wait()
    with HearthClient(run.addr, timeout=300.0) as client:
        while not t.stop.is_set():
            prompt, shifted = t.pick(run, rng, home)
            before_swap = run.name not in t.adapter
            try:
                for _ in client.generate(prompt, MODEL_NAME, max_tokens=LONG_TOKENS,
                                         ignore_eos=True, adapter=t.adapter.get(run.name, "")):
                    pass
            except grpc.RpcError as exc:
                run.failed_streams += 1
                log.warning("%s: a long stream failed: %s", run.name, exc.code())
                if run.failed_streams > MAX_FAILURES:
                    return
                continue
            with run.lock:
                run.sent += 1
                run.new_sent += shifted
                run.long_done += 1
                run.across_swap += before_swap and run.name in t.adapter


# ---- measuring ------------------------------------------------------------------------

def new_domain_ppl(site: Any, threads: int) -> float:
    out = site.run("fed", "evaluate", "--data", "train", "--heldout", "newdomain",
                   "--threads", str(threads))
    return float(out["ppl"])


def summarize(o: DriftSimulationOptions, runs: list[SiteRun],
              ppl: dict[str, tuple[float, float]], rounds: int,
              gate: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    delays: dict[str, int | None] = {}
    false_alarms = 0
    for r in runs:
        after = [t for t in r.onsets if r.shifted_at(o, t)]
        false_alarms += len(r.onsets) - len(after)
        delays[r.name] = after[0] - o.requests_before if after else None
    return {
        "detection_delay_requests": delays,
        "false_alarms": false_alarms,
        "requests_before_shift": o.requests_before,
        "rounds_triggered": rounds,
        "gate": gate,
        "sites": {name: {"new_domain_ppl_before": b, "new_domain_ppl_after": a}
                  for name, (b, a) in ppl.items()},
        "failed_streams": sum(r.failed_streams for r in runs),
        "null": o.null, "shift": 0.0 if o.null else o.shift, "seed": o.seed,
        "federation": o.federation,
        "requests": {r.name: r.sent for r in runs},
        "new_domain_requests": {r.name: r.new_sent for r in runs},
        "new_domain_requests_before_training": {r.name: r.new_before_training for r in runs},
        "long_streams": {r.name: r.long_done for r in runs},
        "streams_across_swap": {r.name: r.across_swap for r in runs},
        "swapped_at_request": {r.name: r.swapped_at for r in runs},
        "versions": {r.name: r.versions for r in runs},
        "errors": {r.name: r.error for r in runs if r.error},
        "drift": {"reference_size": o.reference_size, "window": o.window,
                  "stride": o.stride, "ert_requests": o.ert_requests},
        "model": o.model or "tiny (generated)",
        "seconds": round(seconds, 1),
    }


# ---- the run ------------------------------------------------------------------------

def run(o: DriftSimulationOptions) -> dict[str, Any]:
    o.check()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hearth-drift-sim-") as tmp:
        root = Path(o.workdir) if o.workdir else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        coordinator, sites, model = setup(o, root)
        new_traffic, _ = new_domain(o.sites, o.seed)
        before = {s.name: new_domain_ppl(s, o.threads) for s in sites}
        runs = [SiteRun(s.name, i) for i, s in enumerate(sites)]
        traffic = Traffic(o, new_traffic)
        loop = None
        try:
            if o.federation:
                loop = FederationLoop(coordinator, sites, runs, root, o.threads)
            for s, r in zip(sites, runs, strict=True):
                start_daemon(o, root, s, model, r, loop.address if loop else None)
            homes = [home_pool(r.index, o.sites, o.seed) for r in runs]
            threads = [threading.Thread(target=drive_site, name=f"traffic-{r.name}",
                                        args=(traffic, r, h, loop is None), daemon=True)
                       for r, h in zip(runs, homes, strict=True)]
            if loop is not None:
                threads += [threading.Thread(target=drive_long, name=f"long-{r.name}",
                                             args=(traffic, r, h), daemon=True)
                            for r, h in zip(runs, homes, strict=True)]
            for th in threads:
                th.start()
            deadline = time.monotonic() + o.timeout_s
            main = threads[:len(runs)]
            while time.monotonic() < deadline and any(th.is_alive() for th in main):
                if loop is not None and loop.step(o, traffic):
                    break
                time.sleep(0.25)
            traffic.stop.set()
            traffic.long_streams.set()
            for th in threads:
                th.join(max(1.0, deadline - time.monotonic()))
        finally:
            traffic.stop.set()
            traffic.long_streams.set()
            for r in runs:
                stop_process(r.proc)
            summary = loop.stop() if loop is not None else None
        after = {s.name: new_domain_ppl(s, o.threads) for s in sites}
        ppl = {n: (before[n], after[n]) for n in before}
        rounds, gate = summary if summary is not None else (0, [])
        return summarize(o, runs, ppl, rounds, gate, time.monotonic() - started)


# ---- the command line ---------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DriftSimulationOptions()
    p.add_argument("--sites", type=int, default=d.sites)
    p.add_argument("--model", help="GGUF every site serves (default: the generated tiny model)")
    p.add_argument("--shift", type=float, default=d.shift,
                   help="fraction of the traffic that moves to the new domain")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="the corpus's and the traffic's random draws")
    p.add_argument("--null", action="store_true",
                   help="no shift: every alarm is a false alarm")
    p.add_argument("--requests-before", type=int, default=d.requests_before,
                   help="requests per site before the shift (the reference included)")
    p.add_argument("--requests-after", type=int, default=d.requests_after,
                   help="requests per site after the shift: the longest wait for an alarm "
                        "(with --null: the run's length after the first --requests-before)")
    p.add_argument("--after-swap", type=int, default=d.after_swap,
                   help="requests per site under the release once it is swapped in")
    p.add_argument("--no-federation", action="store_true",
                   help="the watch alone: no coordinator, no rounds, no auto-apply")
    p.add_argument("--reference-size", type=int, default=d.reference_size)
    p.add_argument("--window", type=int, default=d.window)
    p.add_argument("--ert", type=int, default=d.ert_requests,
                   help="the daemons' drift.ert_requests")
    p.add_argument("--threads", type=int, default=d.threads, help="CPU threads per process")
    p.add_argument("--timeout", type=float, default=d.timeout_s,
                   help="seconds the traffic may run, at most")
    p.add_argument("--workdir", help="keep every party's state here (default: a temporary "
                                     "directory, removed at the end)")


def options_of(args: argparse.Namespace) -> DriftSimulationOptions:
    return DriftSimulationOptions(
        sites=args.sites, model=args.model, shift=args.shift, seed=args.seed, null=args.null,
        requests_before=args.requests_before, requests_after=args.requests_after,
        after_swap=args.after_swap, federation=not args.no_federation,
        reference_size=args.reference_size, window=args.window, ert_requests=args.ert,
        threads=args.threads, timeout_s=args.timeout, workdir=args.workdir)
