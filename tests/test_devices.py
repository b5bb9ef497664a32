"""Real ggml device enumeration (`hearth devices`, the doctor's GPU lines)
on the machine the tests run on, checked against what the kernel reports."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import doctor
from runtime.config import Config
from runtime.doctor import DoctorInput, Status, check_gpu
from runtime.native import build_info, list_devices

LINE = re.compile(r"^(\d+): (\S+)\s+(\S+)\s+(.*?)  ([0-9.]+)/([0-9.]+) GiB free$")


def proc_value(path: str, key: str) -> str:
    for line in Path(path).read_text().splitlines():
        if line.startswith(key):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{key} not in {path}")


def test_hearth_devices_lists_the_cpu_as_the_kernel_describes_it() -> None:
    """ggml's CPU device carries /proc/cpuinfo's model name and about
    /proc/meminfo's MemTotal; every GPU ggml sees is listed too.  Fails if
    the enumeration in the core (hearth_device_count/get) returned nothing,
    or the wrong bytes (a size in KiB instead of bytes is off by 1024)."""
    out = subprocess.run([sys.executable, "-m", "runtime.cli.main", "devices"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    first, *rows = out.splitlines()
    assert first == build_info() and first.startswith("hearth-core ")
    parsed = [LINE.match(r) for r in rows]
    assert rows and all(parsed), rows
    devices = list_devices()
    assert [int(m.group(1)) for m in parsed if m] == [d.index for d in devices]
    cpus = [m for m in parsed if m and m.group(2) == "cpu"]
    assert len(cpus) == 1
    cpu = cpus[0]
    assert cpu.group(4) == proc_value("/proc/cpuinfo", "model name")
    mem_total_gib = int(proc_value("/proc/meminfo", "MemTotal").split()[0]) / 2**20
    free, total = float(cpu.group(5)), float(cpu.group(6))
    assert abs(total - mem_total_gib) <= 0.1 + 0.01 * mem_total_gib, (total, mem_total_gib)
    assert 0 < free <= total
    gpus = [d for d in devices if d.type in ("gpu", "igpu")]
    if "cuda=0" in first:
        assert not gpus


def test_the_doctors_gpu_lines_follow_the_devices_and_the_device_nodes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On this machine's real enumeration: with no GPU visible and no NVIDIA
    device nodes the doctor says the models run on the CPU; with device
    nodes but the CPU build, it warns and names the fix; a GPU that ggml
    sees is named.  It found that the doctor took every build for a CUDA
    one ("cuda" is in "cuda=0"), so a CPU build on a GPU machine was told
    the driver was broken instead of to install the CUDA build."""
    inp = DoctorInput(Config(), [], Path("/nonexistent"), None, None)
    gpus = [d for d in list_devices() if d.type in ("gpu", "igpu")]
    findings = {f.check: f for f in check_gpu(inp)}
    if gpus:
        assert findings["gpu"].status is Status.OK
        assert findings["gpu"].detail.startswith(f"{len(gpus)} visible to ggml: ")
        assert (gpus[0].description or gpus[0].name) in findings["gpu"].detail
        return
    if not doctor.nvidia_nodes():
        assert (findings["gpu"].status, findings["gpu"].detail) == (
            Status.OK, "no GPU on this machine: models run on the CPU")
        assert findings["driver"].status in (Status.SKIP, Status.OK)
    monkeypatch.setattr(doctor, "nvidia_nodes", lambda: ["/dev/nvidia0", "/dev/nvidiactl"])
    findings = {f.check: f for f in check_gpu(inp)}
    if "cuda=1" in build_info().split():
        assert findings["gpu"].status is Status.FAIL
        assert "ggml sees no GPU" in findings["gpu"].detail
    else:
        assert findings["gpu"].status is Status.WARN
        assert "2 NVIDIA device nodes, but this is the CPU build" in findings["gpu"].detail
        assert "CUDA=1" in findings["gpu"].fix
