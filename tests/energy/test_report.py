"""The audit log's request records carry energy, and `hearth energy report`
adds them up per model and per adapter; the weights survive in the store."""
from __future__ import annotations

from pathlib import Path

import pytest

from runtime.energy.report import build_report, format_report
from runtime.events import RequestFinished
from runtime.storage.audit import AuditLog
from runtime.storage.keys import KeySource
from runtime.storage.store import SealedStore

KEY = KeySource("key-file", "t", b"e" * 32)


def finished(i: int, model: str, joules: float, adapter: str = "", source: str = "estimate"
             ) -> RequestFinished:
    return RequestFinished(f"req-{i}", model, "unix:0", "generate", "ok", "length",
                           10, 20, 4, 0.0, 0.01, 0.5, adapter=adapter, energy_joules=joules,
                           energy_source=source, co2e_grams=joules * 1e-4)


@pytest.fixture
def store(tmp_path: Path) -> SealedStore:
    s = SealedStore.init(tmp_path / "state", KEY)
    yield s
    s.close()


def test_audit_records_carry_energy_and_the_report_adds_them(store: SealedStore) -> None:
    """Checked that it can fail: a report that forgets the adapter rows, or
    an audit record without the energy fields, breaks the sums below."""
    log = AuditLog(store)
    log.start()
    log.record(finished(1, "gemma", 2.0))
    log.record(finished(2, "gemma", 3.0, adapter="clinic"))
    log.record(finished(3, "smol", 1.5))
    log.record(finished(4, "smol", 0.0, source=""))          # accounting was off
    log.close()
    entries = list(AuditLog(store).entries())
    assert [e["energy_joules"] for e in entries] == [2.0, 3.0, 1.5, 0.0]
    assert entries[0]["energy_source"] == "estimate"
    assert entries[0]["co2e_grams"] == pytest.approx(2e-4)
    report = build_report(entries).to_json()
    assert report["models"]["gemma"]["joules"] == pytest.approx(5.0)
    assert report["models"]["gemma"]["requests"] == 2
    assert report["models"]["gemma"]["tokens"] == 2 * (10 - 4 + 20)
    assert report["models"]["gemma"]["joules_per_token"] == pytest.approx(5.0 / 52)
    assert list(report["adapters"]) == ["gemma@clinic"]
    assert report["adapters"]["gemma@clinic"]["joules"] == pytest.approx(3.0)
    assert report["total"]["joules"] == pytest.approx(6.5)
    assert report["total"]["co2e_grams"] == pytest.approx(6.5e-4)
    assert report["requests_without_energy"] == 1
    text = format_report(build_report(entries))
    assert "gemma@clinic" in text and "not a measurement" in text


def test_weights_are_sealed_and_read_back(store: SealedStore) -> None:
    """Fails when the weights are not put in the store (the second service
    starts from the defaults)."""
    from types import SimpleNamespace

    from runtime.config import EnergyConfig
    from runtime.energy.meters import Reading
    from runtime.energy.service import EnergyService
    from runtime.energy.weights import Weights

    class Meter:
        def read(self) -> Reading:
            return Reading(0.0, "rapl")

    models = SimpleNamespace(handles=lambda: [])
    first = EnergyService(EnergyConfig(), models, store, meter=Meter())  # type: ignore[arg-type]
    first._weights_changed(Weights(4.0, 0.01, 0.2))
    again = EnergyService(EnergyConfig(), models, store, meter=Meter())  # type: ignore[arg-type]
    assert again.accountant.weights == Weights(4.0, 0.01, 0.2)
