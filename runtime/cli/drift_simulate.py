"""`hearth drift simulate`: the drift watch on real daemons, on loopback.

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
  first alarm onset after it (None when it never alarms).

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

from runtime.errors import ConfigError, InternalError

log = logging.getLogger("hearth.drift")

MODEL_NAME = "clinic"
FEDERATION = "drift-sim"
TRAFFIC_POOL = 400          # distinct home-domain notes a site's traffic is drawn from
NEW_POOL = 400              # distinct new-domain notes the shifted traffic is drawn from
NEW_HELDOUT = 40            # new-domain notes kept for perplexity, never sent
MAX_SITES = 6               # the corpus has 8 specialties; the new one must be no site's


@dataclass(frozen=True)
class DriftSimulationOptions:
    sites: int = 3
    model: str | None = None
    shift: float = 0.2
    seed: int = 0
    null: bool = False
    requests_before: int = 300       # per site, before the shift (reference included)
    requests_after: int = 600        # per site, at most, after the shift
    workdir: str | None = None
    reference_size: int = 200        # the daemons' [drift] table: sized for a short run
    window: int = 50
    stride: int = 5
    ert_requests: int = 10_000
    max_tokens: int = 4
    threads: int = 1
    timeout_s: float = 1800.0

    def check(self) -> None:
        if not 1 <= self.sites <= MAX_SITES:
            raise ConfigError(f"--sites: 1..{MAX_SITES} (the new domain must be a specialty "
                              f"no site has), got {self.sites}")
        if not 0.0 < self.shift <= 1.0 and not self.null:
            raise ConfigError(f"--shift: in (0, 1], got {self.shift}")
        if self.requests_before < self.reference_size + self.window:
            raise ConfigError(f"--requests-before: at least reference ({self.reference_size})"
                              f" + window ({self.window}), so the watch is armed before the "
                              f"shift; got {self.requests_before}")
        if self.requests_after < 1:
            raise ConfigError("--requests-after: at least 1")


@dataclass
class SiteRun:
    """One site's daemon and what its traffic saw."""

    name: str
    index: int
    addr: str = ""
    proc: subprocess.Popen[bytes] | None = None
    sent: int = 0
    failed_streams: int = 0
    onsets: list[int] = field(default_factory=list)     # request numbers (1-based)
    versions: list[str] = field(default_factory=list)   # drift versions seen, in order
    error: str | None = None


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

def _write_lines(path: Path, notes: list[str]) -> Path:
    path.write_text("".join(f"{n}\n" for n in notes), encoding="utf-8")
    return path


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
    newdomain = _write_lines(root / "newdomain-heldout.txt", new_heldout)
    coordinator = Party(root, "coordinator", o.timeout_s)
    coordinator.run("fed", "init", "--federation", FEDERATION, "--base-model", model,
                    "--min-sites", str(max(1, o.sites - o.sites // 3)))
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


def drift_toml(o: DriftSimulationOptions) -> str:
    """The sites' [drift] table: every request sampled (the harness counts
    requests), a reference and window small enough for a short run."""
    return (f"[drift]\nenabled = true\nsample_fraction = 1.0\n"
            f"reference_size = {o.reference_size}\nwindow = {o.window}\n"
            f"stride = {o.stride}\nert_requests = {o.ert_requests}\n")


def start_daemon(o: DriftSimulationOptions, root: Path, site: Any, model: str,
                 run: SiteRun) -> None:
    config = root / f"{site.name}.toml"
    config.write_text(drift_toml(o))
    ready = root / f"{site.name}.ready.json"
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    log_file = (logs / f"{site.name}-daemon.log").open("w")
    argv = [sys.executable, "-m", "runtime.cli.main", "serve", "--config", str(config),
            "--model", f"{MODEL_NAME}={model}", "--listen", "127.0.0.1:0",
            "--listen", f"unix:{root / (site.name + '.sock')}",
            "--parallel", "2", "--ctx", "4096", "--threads", str(o.threads),
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


def stop_daemon(run: SiteRun) -> None:
    if run.proc is None or run.proc.poll() is not None:
        return
    run.proc.send_signal(signal.SIGTERM)
    try:
        run.proc.wait(60)
    except subprocess.TimeoutExpired:
        run.proc.kill()
        run.proc.wait()


# ---- traffic ------------------------------------------------------------------------

def request_plan(o: DriftSimulationOptions, index: int) -> list[bool]:
    """Per request of a site, whether it comes from the new domain."""
    rng = random.Random(f"hearth-drift-sim/{o.seed}/{index}")
    total = o.requests_before + o.requests_after
    return [not o.null and k >= o.requests_before and rng.random() < o.shift
            for k in range(total)]


def drift_state(client: Any) -> tuple[int, bool, str]:
    """(requests observed over all versions, any version alarmed, the newest
    version's name) from the daemon's drift summaries."""
    summaries = list(client.get_model(MODEL_NAME).drift)
    observed = sum(int(d.observed) for d in summaries)
    alarm = any(d.alarm for d in summaries)
    newest = summaries[-1].version if summaries else ""
    return observed, alarm, newest


def drive_site(o: DriftSimulationOptions, run: SiteRun, home: list[str], new: list[str],
               stop: threading.Event, until_alarm: bool) -> None:
    """One stream of requests, each awaited and then its drift verdict read;
    with `until_alarm` it ends at the site's first alarm after the shift."""
    from runtime.client import HearthClient

    rng = random.Random(f"hearth-drift-sim/prompts/{o.seed}/{run.index}")
    plan = request_plan(o, run.index)
    alarmed = False
    try:
        with HearthClient(run.addr, timeout=120.0) as client:
            for k, shifted in enumerate(plan):
                if stop.is_set():
                    return
                prompt = rng.choice(new if shifted else home)
                try:
                    client.complete(prompt, MODEL_NAME, max_tokens=o.max_tokens)
                except grpc.RpcError as exc:
                    run.failed_streams += 1
                    log.warning("%s: request %d failed: %s", run.name, k + 1, exc.code())
                    continue
                run.sent = k + 1
                _, alarm, version = wait_observed(client, run.sent - run.failed_streams)
                if version and (not run.versions or run.versions[-1] != version):
                    run.versions.append(version)
                if alarm and not alarmed:
                    run.onsets.append(run.sent)
                alarmed = alarm
                if until_alarm and run.onsets and shifted_yet(o, run.onsets[-1]):
                    return
    except Exception as exc:        # reported, not raised: the other sites go on
        run.error = f"{type(exc).__name__}: {exc}"
        log.exception("%s: traffic stopped", run.name)


def shifted_yet(o: DriftSimulationOptions, sent: int) -> bool:
    return not o.null and sent > o.requests_before


def wait_observed(client: Any, want: int, timeout_s: float = 30.0) -> tuple[int, bool, str]:
    """The drift summary once the worker has observed `want` requests."""
    deadline = time.monotonic() + timeout_s
    while True:
        observed, alarm, version = drift_state(client)
        if observed >= want or time.monotonic() > deadline:
            return observed, alarm, version
        time.sleep(0.005)


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
        after = [t for t in r.onsets if shifted_yet(o, t)]
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
        "requests": {r.name: r.sent for r in runs},
        "versions": {r.name: r.versions for r in runs},
        "errors": {r.name: r.error for r in runs if r.error},
        "drift": {"reference_size": o.reference_size, "window": o.window,
                  "stride": o.stride, "ert_requests": o.ert_requests},
        "model": o.model or "tiny (generated)",
        "seconds": round(seconds, 1),
    }


def run(o: DriftSimulationOptions) -> dict[str, Any]:
    o.check()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hearth-drift-sim-") as tmp:
        root = Path(o.workdir) if o.workdir else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        _, sites, model = setup(o, root)
        new_traffic, _ = new_domain(o.sites, o.seed)
        before = {s.name: new_domain_ppl(s, o.threads) for s in sites}
        runs = [SiteRun(s.name, i) for i, s in enumerate(sites)]
        stop = threading.Event()
        try:
            for s, r in zip(sites, runs, strict=True):
                start_daemon(o, root, s, model, r)
            threads = [threading.Thread(
                target=drive_site, name=f"traffic-{r.name}", daemon=True,
                args=(o, r, home_pool(r.index, o.sites, o.seed), new_traffic, stop, True))
                for r in runs]
            for t in threads:
                t.start()
            deadline = time.monotonic() + o.timeout_s
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
            stop.set()
        finally:
            for r in runs:
                stop_daemon(r)
        after = {s.name: new_domain_ppl(s, o.threads) for s in sites}
        ppl = {n: (before[n], after[n]) for n in before}
        return summarize(o, runs, ppl, 0, [], time.monotonic() - started)


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
                   help="requests per site after the shift, at most")
    p.add_argument("--reference-size", type=int, default=d.reference_size)
    p.add_argument("--window", type=int, default=d.window)
    p.add_argument("--ert", type=int, default=d.ert_requests,
                   help="the daemons' drift.ert_requests")
    p.add_argument("--threads", type=int, default=d.threads, help="CPU threads per process")
    p.add_argument("--workdir", help="keep every party's state here (default: a temporary "
                                     "directory, removed at the end)")


def options_of(args: argparse.Namespace) -> DriftSimulationOptions:
    return DriftSimulationOptions(
        sites=args.sites, model=args.model, shift=args.shift, seed=args.seed, null=args.null,
        requests_before=args.requests_before, requests_after=args.requests_after,
        reference_size=args.reference_size, window=args.window, ert_requests=args.ert,
        threads=args.threads, workdir=args.workdir)
