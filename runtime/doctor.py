"""`hearth doctor`: checks an installation, one line per check with a fix.

Each check returns Findings; none raises.  They read the real system: the
native core and what ggml sees, /dev/nvidia* and the driver's /proc file,
/proc/meminfo, the GGUF headers of the configured models, the state
directory, the keyring and (given the key) the sealed store, the audit
chain, and the unit through `systemd-analyze security --offline=yes`.
"""
from __future__ import annotations

import enum
import glob
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from runtime import errors
from runtime.config import Config, ModelConfig, check_listeners
from runtime.storage.keys import KeySource

GIB = 1 << 30
MAX_EXPOSURE = 2.0
KV_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 1.0625, "q4_0": 0.5625}
# What a loaded model costs beyond weights and KV: compute buffers, logits,
# the runtime itself (benchmarks/results/serving-latest.md measures ~170 MB).
OVERHEAD = 512 << 20


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"
    SKIP = "skip"


@dataclass(frozen=True)
class Finding:
    check: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f"  -> {self.fix}" if self.fix and self.status is not Status.OK else ""
        return f"{self.status.value:4}  {self.check:10} {self.detail}{fix}"


@dataclass
class DoctorInput:
    config: Config
    models: list[ModelConfig]
    state_dir: Path
    key: Callable[[], KeySource] | None   # None: no key given, store not opened
    unit: Path | None


# ---- configuration ------------------------------------------------------------------------

def check_config(inp: DoctorInput) -> Iterator[Finding]:
    try:
        check_listeners(inp.config)
    except errors.ConfigError as exc:
        yield Finding("config", Status.FAIL, str(exc), "see the message")
        return
    tls = inp.config.tls
    for label, path in (("tls.cert_file", tls.cert_file), ("tls.key_file", tls.key_file),
                        ("tls.client_ca_file", tls.client_ca_file)):
        if path and not os.access(path, os.R_OK):
            yield Finding("config", Status.FAIL, f"{label}: {path} is not readable",
                          "fix the path or its permissions")
    listen = ", ".join(inp.config.server.listen + inp.config.tls.listen)
    yield Finding("config", Status.OK, f"{len(inp.models)} model(s) to load at start; "
                  f"listening on {listen}")


# ---- native core and GPUs -----------------------------------------------------------------

def check_core(_: DoctorInput) -> Iterator[Finding]:
    try:
        from runtime.native import build_info
    except errors.HearthError as exc:
        yield Finding("core", Status.FAIL, str(exc), "reinstall: make setup, or install.sh")
        return
    yield Finding("core", Status.OK, build_info())


def nvidia_nodes() -> list[str]:
    return sorted(p for p in glob.glob("/dev/nvidia*") if not os.path.isdir(p))


def driver_version() -> str | None:
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    m = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][0-9.]+)", text)
    return m.group(1) if m else text.split("\n", 1)[0].strip()


def check_gpu(_: DoctorInput) -> Iterator[Finding]:
    from runtime.models.gpu_fallback import cpu_fallback
    from runtime.native import build_info, list_devices

    nodes = nvidia_nodes()
    gpus = [d for d in list_devices() if d.type in ("gpu", "igpu")]
    cuda_core = "cuda=1" in build_info().split()    # the core says "cuda=0" or "cuda=1"
    fallback = cpu_fallback() if cuda_core else None
    if fallback and not nodes:
        yield Finding("gpu", Status.WARN, fallback,
                      "serve on a machine with an NVIDIA GPU and driver, or install the CPU "
                      "build (make setup)")
    elif fallback:
        yield Finding("gpu", Status.FAIL, fallback,
                      "check the driver (nvidia-smi), free GPU memory, and that DeviceAllow= "
                      "lets the service open /dev/nvidia*")
    elif gpus:
        names = ", ".join(f"{d.description or d.name} ({d.free_bytes / GIB:.1f}/"
                          f"{d.total_bytes / GIB:.1f} GiB free)" for d in gpus)
        yield Finding("gpu", Status.OK, f"{len(gpus)} visible to ggml: {names}")
    elif nodes and not cuda_core:
        yield Finding("gpu", Status.WARN, f"{len(nodes)} NVIDIA device nodes, but this is the "
                      "CPU build: models run on the CPU",
                      "make setup CUDA=1 (or install the cuda bundle)")
    elif nodes:
        yield Finding("gpu", Status.FAIL, "NVIDIA device nodes exist but ggml sees no GPU",
                      "check the driver (nvidia-smi) and that DeviceAllow= lets the service "
                      "open /dev/nvidia*")
    else:
        yield Finding("gpu", Status.OK, "no GPU on this machine: models run on the CPU")
    version = driver_version()
    if version:
        yield Finding("driver", Status.OK, f"NVIDIA kernel module {version}")
    elif nodes:
        yield Finding("driver", Status.FAIL, "/dev/nvidia* exist but "
                      "/proc/driver/nvidia/version does not", "load the driver: modprobe nvidia")
    else:
        yield Finding("driver", Status.SKIP, "no NVIDIA driver loaded (none needed on the CPU)")


# ---- memory for the configured models ----------------------------------------------------

def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def model_bytes(m: ModelConfig, state: Path) -> tuple[int, int, str]:
    """(weights, kv cache) bytes of a configured model, and a note."""
    from runtime.models.gguf_file import inspect_gguf
    from runtime.models.gpu_fit import kv_bytes_per_layer

    if m.store:
        from runtime.storage.catalog import Catalog
        from runtime.storage.store import Kind

        catalog = Catalog(state / "catalog.sqlite")
        try:
            row = catalog.get(Kind.MODEL, m.name)
        finally:
            catalog.close()
        # the sealed file is the plaintext plus a tag per 1 MiB chunk
        sealed = os.path.getsize(state / "objects" / f"{row.id}.sealed")
        return sealed, 0, "sealed: KV cache not estimated (header not read without the key)"
    info = inspect_gguf(m.path, f"model {m.name}")
    per_value = (KV_BYTES.get(m.cache_type_k, 2.0) + KV_BYTES.get(m.cache_type_v, 2.0)) / 2
    kv = kv_bytes_per_layer(info, m.n_ctx, per_value) * info.arch_int("block_count")
    return os.path.getsize(m.path), kv, ""


def check_memory(inp: DoctorInput) -> Iterator[Finding]:
    if not inp.models:
        yield Finding("memory", Status.SKIP, "no models configured to load at start")
        return
    total = 0
    for m in inp.models:
        try:
            weights, kv, note = model_bytes(m, inp.state_dir)
        except errors.HearthError as exc:
            yield Finding("model", Status.FAIL, f"{m.name}: {exc}",
                          "fix the path in the config, or import the model into the store")
            continue
        total += weights + kv + OVERHEAD
        yield Finding("model", Status.OK, f"{m.name}: {weights / GIB:.2f} GiB weights + "
                      f"{kv / GIB:.2f} GiB KV cache (n_ctx {m.n_ctx})"
                      + (f"; {note}" if note else ""))
    from runtime.native import list_devices

    gpu_free = sum(d.free_bytes for d in list_devices() if d.type in ("gpu", "igpu"))
    available = mem_available()
    where = (f"{available / GIB:.1f} GiB RAM available"
             + (f" + {gpu_free / GIB:.1f} GiB free GPU memory" if gpu_free else ""))
    if total <= available + gpu_free:
        yield Finding("memory", Status.OK, f"models need ~{total / GIB:.1f} GiB; {where}")
    else:
        yield Finding("memory", Status.FAIL, f"models need ~{total / GIB:.1f} GiB; only {where}",
                      "lower n_ctx or n_parallel, use a smaller quantization or cache_type "
                      "q8_0, or load fewer models at start (load = false)")


# ---- state directory, key, store, audit --------------------------------------------------

def check_store(inp: DoctorInput) -> Iterator[Finding]:
    from runtime.storage.keys import Keyring

    d = inp.state_dir
    if not d.exists():
        needed = any(m.store for m in inp.models)
        yield Finding("state", Status.FAIL if needed else Status.SKIP,
                      f"{d} does not exist", "hearth keys init --state-dir "
                      f"{d} --key-file KEY (or install.sh)")
        return
    st = d.stat()
    if stat.S_IMODE(st.st_mode) & 0o077:
        yield Finding("state", Status.FAIL, f"{d} is mode {stat.S_IMODE(st.st_mode):04o}: "
                      "others can look inside", f"chmod 0700 {d}")
    elif st.st_uid != os.geteuid():
        yield Finding("state", Status.WARN, f"{d} belongs to uid {st.st_uid}, not to this "
                      f"user (uid {os.geteuid()})", "run doctor as the service user")
    else:
        yield Finding("state", Status.OK, f"{d} (mode 0700, ours)")
    try:
        ring = Keyring(d).load()
    except errors.HearthError as exc:
        yield Finding("keyring", Status.FAIL, str(exc), "restore keyring.json from a backup")
        return
    failed = int(ring.get("failed_attempts", 0))
    yield Finding("keyring", Status.WARN if failed else Status.OK,
                  f"{len(ring['keks'])} master key(s), active {ring['active']}"
                  + (f"; {failed} failed unlock attempts since the last success" if failed
                     else ""),
                  "someone tried wrong keys: check who" if failed else "")
    if inp.key is None:
        yield Finding("key", Status.SKIP, "no key given: the store was not opened",
                      "pass --key-file, --passphrase-file or --credential to check it")
    else:
        yield from _open_store(inp)
    yield from _audit(d)


def _open_store(inp: DoctorInput) -> Iterator[Finding]:
    from runtime.storage.store import Kind, SealedStore

    assert inp.key is not None
    try:
        store = SealedStore.open(inp.state_dir, inp.key())
    except errors.HearthError as exc:
        yield Finding("key", Status.FAIL, str(exc), "use the master key this store was "
                      "created with (hearth keys status shows its id)")
        return
    try:
        rows = store.catalog.rows()
        missing = [r for r in rows if not store._path(r.id).exists()]
        yield Finding("key", Status.OK, f"opens the store (master key {store.master.id})")
        if missing:
            yield Finding("store", Status.FAIL, f"{len(missing)} of {len(rows)} objects have "
                          f"no file: {', '.join(f'{r.kind}/{r.name}' for r in missing[:5])}",
                          "restore objects/ from a backup, or re-import those models")
        else:
            yield Finding("store", Status.OK, f"{len(rows)} sealed objects, all present")
        names = {r.name for r in rows if r.kind == Kind.MODEL}
        for m in inp.models:
            if m.store and m.name not in names:
                yield Finding("store", Status.FAIL, f"model {m.name} is configured with "
                              "store = true but is not in the store",
                              f"hearth models import FILE --name {m.name}")
    finally:
        store.close()


def _audit(d: Path) -> Iterator[Finding]:
    from runtime.storage.audit_verify import verify_state_dir

    if not (d / "audit").exists():
        yield Finding("audit", Status.SKIP, "no audit log yet")
        return
    try:
        seq, broken, signed = verify_state_dir(d)
    except (OSError, ValueError, errors.HearthError) as exc:
        yield Finding("audit", Status.FAIL, f"cannot read the audit log: {exc}",
                      "hearth audit verify")
        return
    if broken is not None:
        yield Finding("audit", Status.FAIL, f"chain broken at {broken}",
                      "keep the log as evidence; then hearth audit repair")
    else:
        yield Finding("audit", Status.OK if signed else Status.WARN,
                      f"{seq} records, chain intact"
                      + ("" if signed else "; no public key, signatures not checked"))


# ---- the systemd unit --------------------------------------------------------------------

def find_unit(explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    for candidate in ("/etc/systemd/system/hearth.service", "/usr/lib/systemd/system/"
                      "hearth.service"):
        if os.path.exists(candidate):
            return Path(candidate)
    return None


def check_unit(inp: DoctorInput) -> Iterator[Finding]:
    if inp.unit is None:
        yield Finding("unit", Status.SKIP, "hearth.service is not installed",
                      "packaging/install.sh installs it")
        return
    if shutil.which("systemd-analyze") is None:
        yield Finding("unit", Status.SKIP, "systemd-analyze is not installed")
        return
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(inp.unit)],
                       capture_output=True, text=True, check=False, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout)
    if not m:
        yield Finding("unit", Status.FAIL, f"systemd-analyze could not rate {inp.unit}: "
                      f"{(r.stderr or r.stdout).strip()[:200]}", "systemd-analyze verify it")
        return
    score = float(m.group(1))
    text = inp.unit.read_text(errors="replace")
    problems = []
    if re.search(r"^\s*PrivateDevices\s*=\s*(yes|true|1)", text, re.M):
        problems.append("PrivateDevices= hides the GPUs")
    if not re.search(r"^\s*DeviceAllow\s*=\s*\S*nvidia", text, re.M):
        problems.append("no DeviceAllow= for /dev/nvidia*")
    if score > MAX_EXPOSURE:
        yield Finding("unit", Status.FAIL, f"{inp.unit}: exposure {score} (> {MAX_EXPOSURE})",
                      "reinstall packaging/systemd/hearth.service; see systemd-analyze "
                      "security for the open items")
    elif problems:
        yield Finding("unit", Status.WARN, f"{inp.unit}: exposure {score}; "
                      + "; ".join(problems), "reinstall packaging/systemd/hearth.service")
    else:
        yield Finding("unit", Status.OK, f"{inp.unit}: exposure {score}, GPU access kept")


def check_rpc_workers(inp: DoctorInput) -> Iterator[Finding]:
    """Each ggml RPC worker a configured model lists: reachable, and the
    memory it offers (docs/scale-out.md)."""
    workers = sorted({w for m in inp.config.models.values() for w in m.rpc_workers})
    if not workers:
        return
    from runtime.native import rpc

    if not rpc.available():
        yield Finding("rpc", Status.FAIL, "models list rpc_workers, but the installed llama.cpp "
                      "has no RPC backend", "install a build of llama-cpp-python with "
                      "GGML_RPC=ON (make setup builds one)")
        return
    for worker in workers:
        try:
            info = rpc.probe(worker)
        except rpc.WorkerSilent as exc:
            yield Finding("rpc", Status.WARN, str(exc), "normal while a daemon uses the worker; "
                          "otherwise check that it runs `hearth rpc-worker`")
            continue
        except errors.HearthError as exc:
            yield Finding("rpc", Status.FAIL, str(exc), "start hearth-rpc-worker there and "
                          "check the WireGuard / tunnel link")
            continue
        total = sum(d.total_bytes for d in info.devices)
        yield Finding("rpc", Status.OK, f"{worker}: protocol {info.protocol}, "
                      f"{len(info.devices)} device(s), {info.free_bytes / GIB:.1f} of "
                      f"{total / GIB:.1f} GiB free")


CHECKS = (check_config, check_core, check_gpu, check_memory, check_store, check_unit,
          check_rpc_workers)


def run_checks(inp: DoctorInput) -> Iterator[Finding]:
    for check in CHECKS:
        try:
            yield from check(inp)
        except Exception as exc:   # a check that breaks is itself a finding
            yield Finding(check.__name__.removeprefix("check_"), Status.FAIL,
                          f"the check itself failed: {type(exc).__name__}: {exc}")
