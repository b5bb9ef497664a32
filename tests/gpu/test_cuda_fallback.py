"""The CUDA flavour without a usable GPU serves on the CPU, says why once in
the log and in `hearth doctor`, and never crashes."""
from __future__ import annotations

from pathlib import Path

import pytest

from runtime.doctor import Status, check_gpu
from runtime.models.gpu_fallback import GpuProbe, fallback_reason
from runtime.models.gpu_fit import RESERVE_MIN
from tests.gpu.conftest import gpus
from tests.integration.conftest import start_daemon


@pytest.mark.parametrize(("probe", "expected"), [
    (GpuProbe(False, False, 0, ()), None),                      # the CPU build
    (GpuProbe(True, True, 1, (80 << 30,)), None),               # a usable GPU
    (GpuProbe(True, False, 0, ()), "no NVIDIA driver"),
    (GpuProbe(True, True, 0, ()), "no NVIDIA device"),
    (GpuProbe(True, True, 2, ()), "lists no device CUDA can use"),
    (GpuProbe(True, True, 1, (RESERVE_MIN // 2,)), "too little free GPU memory"),
])
def test_fallback_reason(probe: GpuProbe, expected: str | None) -> None:
    """Each reason from what was probed.  Checked by swapping the driver and
    device-node tests in fallback_reason: the driver rows then fail."""
    reason = fallback_reason(probe)
    assert (reason is None) if expected is None else (expected in (reason or ""))


@pytest.mark.usefixtures("cuda_flavour")
def test_cuda_flavour_without_gpu_serves_on_the_cpu(tiny_model: Path, tmp_path: Path) -> None:
    """The CUDA build on a machine without a GPU or driver: `import` works,
    the daemon serves the tiny model on the CPU, logs the fallback once, and
    doctor explains it.  Skipped in the CPU flavour.  Ran in /tmp/venv-cuda
    (the CUDA wheel built by native/tools/cuda_build.py); deleting the
    log.warning in daemon.serve makes it fail."""
    if gpus():
        pytest.skip("a GPU is visible: this checks the fallback (the gpu tests run here)")
    findings = list(check_gpu(None))  # type: ignore[arg-type]  (unused input)
    gpu = next(f for f in findings if f.check == "gpu")
    assert gpu.status in (Status.WARN, Status.FAIL)
    assert "CUDA build, but no NVIDIA" in gpu.detail and "run on the CPU" in gpu.detail
    d = start_daemon(["--model", f"tiny={tiny_model}", "--listen", "127.0.0.1:0",
                      "--threads", "2", "--parallel", "2", "--ctx", "2048"], tmp_path)
    try:
        with d.client() as c:
            _, tokens, _ = c.complete("the patient", model="tiny", max_tokens=8,
                                      temperature=0.0, ignore_eos=True)
        assert len(tokens) == 8
    finally:
        assert d.stop() == 0, d.log()
    lines = [ln for ln in d.log().splitlines() if "CUDA build, but" in ln]
    assert len(lines) == 1 and "models run on the CPU" in lines[0], d.log()


def test_doctor_names_the_reason_in_a_cuda_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any flavour: doctor's gpu line for a CUDA core with no driver, from a
    stubbed probe.  Fails if check_gpu ignores cpu_fallback (it then says
    "no GPU on this machine", an OK)."""
    import runtime.models.gpu_fallback as fb
    import runtime.native

    monkeypatch.setattr(fb, "probe", lambda: GpuProbe(True, False, 0, ()))
    monkeypatch.setattr(runtime.native, "build_info", lambda: "hearth-core x cuda=1")
    monkeypatch.setattr(runtime.native, "list_devices", lambda: [])
    monkeypatch.setattr("runtime.doctor.nvidia_nodes", lambda: [])
    gpu = next(f for f in check_gpu(None) if f.check == "gpu")  # type: ignore[arg-type]
    assert gpu.status is Status.WARN
    assert gpu.detail == ("CUDA build, but no NVIDIA driver (libcuda.so.1 does not load): "
                          "models run on the CPU")
