"""Every face carries a request's energy on its final answer: hearth.v1's
usage (Generate and Chat share GenerateResponse), the OpenAI gateway's
usage extension, and KServe's final-response parameters."""
from __future__ import annotations

import pytest

from runtime.core.types import GenerateChunk, Usage
from runtime.http.responses import usage_json
from runtime.server.converters import generate_response
from runtime.server.kserve.converters import finish_parameters

USAGE = Usage(12, 30, 4, 0.01, 0.05, 1.5, energy_joules=2.75, energy_source="estimate")
OFF = Usage(12, 30, 4, 0.01, 0.05, 1.5)
LAST = GenerateChunk("", [], finish_reason="stop", usage=USAGE, model="m")


def test_grpc_usage_carries_energy() -> None:
    """Checked that it can fail: without the two fields in the converter the
    proto's energy stays 0 / ""."""
    u = generate_response(LAST).usage
    assert u.energy_joules == pytest.approx(2.75) and u.energy_source == "estimate"
    wire = type(generate_response(LAST)).FromString(generate_response(LAST).SerializeToString())
    assert wire.usage.energy_source == "estimate"
    off = generate_response(GenerateChunk("", [], finish_reason="stop", usage=OFF)).usage
    assert off.energy_joules == 0.0 and off.energy_source == ""


def test_openai_usage_extension() -> None:
    """Fails without the extension in usage_json (the keys are missing)."""
    body = usage_json(USAGE)
    assert body is not None
    assert body["energy_joules"] == pytest.approx(2.75) and body["energy_source"] == "estimate"
    assert body["total_tokens"] == 42
    plain = usage_json(OFF)      # accounting off: exactly OpenAI's keys, no extension
    assert plain is not None and "energy_joules" not in plain and "energy_source" not in plain


def test_kserve_final_parameters() -> None:
    """Fails without the two parameters in finish_parameters."""
    params = finish_parameters(LAST)
    assert params["energy_joules"] == pytest.approx(2.75)
    assert isinstance(params["energy_joules"], float)       # a double_param on the wire
    assert params["energy_source"] == "estimate"
    off = finish_parameters(GenerateChunk("", [], finish_reason="stop", usage=OFF))
    assert "energy_joules" not in off


def test_generate_stats_prints_joules_and_joules_per_token() -> None:
    """`hearth generate --stats`: per token of the request's work (prompt
    tokens computed plus generated: 12 - 4 + 30 = 38)."""
    from runtime.cli.client import _energy

    u = generate_response(LAST).usage
    assert _energy(u) == f", 2.75 J ({2.75 / 38:.4g} J/token, estimate)"
    assert _energy(generate_response(GenerateChunk("", [], finish_reason="stop",
                                                   usage=OFF)).usage) == ""
