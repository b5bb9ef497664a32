"""`hearth fed simulate`: a whole federation on one machine, over the real
transports.  Each party is its own process with its own sealed state
directory and master key, set up with the same commands an operator runs
(keys init, data add, fed init / enroll / issue / join); the rounds then run
online (a `fed coordinator` process and N `fed participate` processes over
mutual TLS on loopback) or air-gapped (plan, export-update, collect,
publish and import-release files in a shared directory standing in for
removable media).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import ConfigError, InternalError

log = logging.getLogger("hearth.federation")
FEDERATION = "simulated"


@dataclass(frozen=True)
class SimulationOptions:
    sites: int = 3
    rounds: int = 2
    model: str | None = None
    data: str | None = None
    transport: str = "grpc"
    secagg: bool = False
    dp_noise: float = 0.0
    workdir: str | None = None
    steps: int = 30
    learning_rate: float = 1e-2
    batch_tokens: int = 512
    rank: int = 8
    clip_norm: float = 5.0
    threads: int = 1
    timeout_s: float = 1800.0


class Party:
    """One state directory and its master key; runs `hearth` commands on it."""

    def __init__(self, root: Path, name: str, timeout_s: float) -> None:
        self.name = name
        self.dir = root / name
        self.key = root / f"{name}.key"
        self.timeout_s = timeout_s
        self.run("keys", "init")

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "runtime.cli.main", *args, "--state-dir", str(self.dir),
                "--key-file", str(self.key)]

    def run(self, *args: str) -> dict[str, Any]:
        """Runs a command to its end; its last stdout line when that is JSON."""
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True,
                              timeout=self.timeout_s, check=False)
        if proc.returncode != 0:
            raise InternalError(f"{self.name}: `hearth {' '.join(args[:2])}` exited "
                                f"{proc.returncode}: {proc.stderr.strip()[-2000:]}")
        return last_json(proc.stdout)

    def start(self, *args: str, log_path: Path) -> subprocess.Popen[str]:
        err = log_path.open("w")
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=err, text=True)


def last_json(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        return {}
    try:
        return dict(json.loads(lines[-1]))
    except ValueError:
        return {}


def _finish(proc: subprocess.Popen[str], name: str, timeout_s: float, log_path: Path
            ) -> dict[str, Any]:
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise InternalError(f"{name}: did not finish within {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise InternalError(f"{name}: exited {proc.returncode}: {tail}")
    return last_json(out)


def _setup(o: SimulationOptions, root: Path) -> tuple[Party, list[Party]]:
    from runtime.federation.corpus import write_corpus
    from runtime.models.tiny import write_tiny_model

    # near-uniform predictions (perplexity about the vocabulary size) that
    # a few steps of LoRA training visibly improve
    model = o.model or str(write_tiny_model(root / "tiny.gguf", output_scale=0.1))
    data = Path(o.data) if o.data else root / "corpus"
    if not o.data:
        write_corpus(data, o.sites)
    coordinator = Party(root, "coordinator", o.timeout_s)
    min_sites = max(1, o.sites - o.sites // 3)       # tolerates a third dropping out
    coordinator.run("fed", "init", "--federation", FEDERATION, "--base-model", model,
                    "--steps", str(o.steps), "--learning-rate", str(o.learning_rate),
                    "--batch-tokens", str(o.batch_tokens),
                    "--rank", str(o.rank), "--clip-norm", str(o.clip_norm),
                    "--noise-multiplier", str(o.dp_noise), "--min-sites", str(min_sites),
                    *(["--secagg"] if o.secagg else []))
    sites = []
    for i in range(o.sites):
        site = Party(root, f"site-{i}", o.timeout_s)
        folder = data / f"site-{i}"
        if not (folder / "train.txt").is_file():
            raise ConfigError(f"--data: {folder}/train.txt is missing")
        site.run("data", "add", "train", str(folder / "train.txt"))
        site.run("data", "add", "heldout", str(folder / "heldout.txt"))
        request = root / f"site-{i}.request.json"
        kit = root / f"site-{i}.kit.json"
        site.run("fed", "enroll", "--site", site.name, "--out", str(request))
        coordinator.run("fed", "issue", str(request), "--out", str(kit))
        site.run("fed", "join", str(kit), "--base-model", model)
        sites.append(site)
    return coordinator, sites


def _online(o: SimulationOptions, root: Path, coordinator: Party, sites: list[Party]
            ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    ready = root / "coordinator.addr"
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    server = coordinator.start("fed", "coordinator", "--listen", "127.0.0.1:0",
                               "--rounds", str(o.rounds), "--ready-file", str(ready),
                               "--step-seconds", "120", log_path=logs / "coordinator.log")
    deadline = time.monotonic() + 120
    while not ready.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            raise InternalError("coordinator did not start: "
                                + (logs / "coordinator.log").read_text()[-3000:])
        time.sleep(0.05)
    address = ready.read_text().strip()
    procs = [s.start("fed", "participate", "--data", "train", "--heldout", "heldout",
                     "--coordinator", address, "--threads", str(o.threads),
                     log_path=logs / f"{s.name}.log") for s in sites]
    results = {s.name: _finish(p, s.name, o.timeout_s, logs / f"{s.name}.log")
               for s, p in zip(sites, procs, strict=True)}
    summary = _finish(server, "coordinator", o.timeout_s, logs / "coordinator.log")
    per_site = {name: {"ppl_before": r["ppl_before"], "ppl_after": r["ppl_after"],
                       "bytes_sent": r["bytes_sent"]} for name, r in results.items()}
    return per_site, summary


def _air_gapped(o: SimulationOptions, root: Path, coordinator: Party, sites: list[Party]
                ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    per_site: dict[str, dict[str, Any]] = {s.name: {"ppl_before": None, "bytes_sent": 0}
                                           for s in sites}
    round_seconds, epsilon = [], None
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    for r in range(1, o.rounds + 1):
        started = time.monotonic()
        media = root / f"media-round-{r}"
        plan = coordinator.run("fed", "plan", "--out", str(media))["plan"]
        procs = [s.start("fed", "export-update", "--plan", plan, "--out", str(media / "updates"),
                         "--data", "train", "--heldout", "heldout", "--threads", str(o.threads),
                         log_path=logs / f"{s.name}-r{r}.log") for s in sites]
        for s, p in zip(sites, procs, strict=True):
            out = _finish(p, s.name, o.timeout_s, logs / f"{s.name}-r{r}.log")
            per_site[s.name]["bytes_sent"] += out["bytes"]
            if per_site[s.name]["ppl_before"] is None:
                per_site[s.name]["ppl_before"] = out["ppl_start"]
        coordinator.run("fed", "collect", str(media / "updates"))
        published = coordinator.run("fed", "publish", "--out", str(media / "releases"))
        epsilon = published["metrics"].get("epsilon")
        for s in sites:
            s.run("fed", "import-release", published["release"])
        round_seconds.append(round(time.monotonic() - started, 3))
    for s in sites:
        per_site[s.name]["ppl_after"] = s.run("fed", "evaluate", "--data", "train", "--heldout",
                                              "heldout", "--threads", str(o.threads))["ppl"]
    return per_site, {"round_seconds": round_seconds, "epsilon": epsilon}


def simulate(o: SimulationOptions) -> dict[str, Any]:
    if o.sites < 2 or o.rounds < 1:
        raise ConfigError("--sites must be >= 2 and --rounds >= 1")
    if o.transport not in ("grpc", "bundle"):
        raise ConfigError(f"--transport: grpc or bundle, not {o.transport!r}")
    if o.secagg and o.transport == "bundle":
        raise ConfigError("--secagg needs --transport grpc: secure aggregation is an "
                          "exchange between online sites; air-gapped rounds rely on DP "
                          "noise and encryption to the coordinator instead")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hearth-fed-sim-") as tmp:
        root = Path(o.workdir) if o.workdir else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        coordinator, sites = _setup(o, root)
        run = _online if o.transport == "grpc" else _air_gapped
        per_site, summary = run(o, root, coordinator, sites)
    return {"sites": per_site, "epsilon": summary.get("epsilon"),
            "round_seconds": summary.get("round_seconds"), "transport": o.transport,
            "secagg": o.secagg, "dp_noise": o.dp_noise, "rounds": o.rounds,
            "model": o.model or "tiny (generated)",
            "seconds": round(time.monotonic() - started, 1)}
