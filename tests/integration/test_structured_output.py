"""Structured output and logprobs through hearth.v1 on the real daemon."""
from __future__ import annotations

import json
import math

import grpc
import jsonschema
import pytest

from runtime._proto.hearth.v1 import inference_pb2 as ipb
from tests.integration.conftest import Daemon

SCHEMA = {"type": "object", "properties": {"dose_mg": {"type": "integer"},
                                           "drug": {"enum": ["aspirin", "heparin"]}},
          "required": ["dose_mg", "drug"], "additionalProperties": False}


def test_json_schema_response_parses_and_validates(tiny_daemon: Daemon) -> None:
    fmt = ipb.ResponseFormat(type=ipb.ResponseFormat.TYPE_JSON_SCHEMA,
                             json_schema=json.dumps(SCHEMA))
    with tiny_daemon.client() as c:
        for temperature in (0.0, 0.9):
            text, _, last = c.complete("order:", max_tokens=200, temperature=temperature,
                                       seed=3, response_format=fmt)
            assert last.finish_reason == ipb.FINISH_REASON_STOP
            jsonschema.validate(json.loads(text), SCHEMA)


def test_json_object_and_grammar(tiny_daemon: Daemon) -> None:
    fmt = ipb.ResponseFormat(type=ipb.ResponseFormat.TYPE_JSON_OBJECT)
    finished = 0
    with tiny_daemon.client() as c:
        # The random model rambles inside strings; the outputs that end are
        # the ones to parse (here half the seeds end within 300 tokens; other
        # CPUs' float rounding picks other samples, so try until two have).
        for seed in range(40):
            text, _, last = c.complete("x", max_tokens=300, temperature=1.0, seed=seed,
                                       response_format=fmt)
            if last.finish_reason == ipb.FINISH_REASON_STOP:
                assert isinstance(json.loads(text), dict)
                finished += 1
            else:
                assert text.startswith("{")
            if finished == 2:
                break
        assert finished == 2
        text, _, _ = c.complete("x", max_tokens=10, temperature=0.0,
                                grammar='root ::= "ok " [0-9]')
        assert text[:3] == "ok " and text[3].isdigit()


@pytest.mark.parametrize(("fields", "expected"), [
    ({"grammar": "root ::= undefined-rule"}, "grammar: line 1, column 10: rule 'undefined-rule'"),
    ({"grammar": 'root ::= "a'}, "grammar: line 1, column 10: unterminated string"),
    ({"response_format": ipb.ResponseFormat(type=ipb.ResponseFormat.TYPE_JSON_SCHEMA,
                                            json_schema="{not json")},
     "json_schema: not valid JSON"),
    ({"response_format": ipb.ResponseFormat(type=ipb.ResponseFormat.TYPE_JSON_SCHEMA,
                                            json_schema='{"type": 12}')},
     "json_schema: not a valid JSON schema"),
    ({"response_format": ipb.ResponseFormat(type=ipb.ResponseFormat.TYPE_JSON_SCHEMA,
                                            json_schema='{"type": "integer", "maximum": 3}')},
     "json_schema: 'maximum' cannot be enforced"),
    ({"response_format": ipb.ResponseFormat(type=ipb.ResponseFormat.TYPE_JSON_SCHEMA)},
     "response_format.json_schema: must not be empty"),
    ({"grammar": 'root ::= "a"', "response_format": ipb.ResponseFormat(
        type=ipb.ResponseFormat.TYPE_JSON_OBJECT)}, "set either grammar or response_format"),
    ({"grammar": 'root ::= "a"', "ignore_eos": True}, "ignore_eos: cannot be combined"),
    ({"top_logprobs": 21, "logprobs": True}, "top_logprobs: must be in [0, 20]"),
    ({"top_logprobs": 2}, "top_logprobs: needs logprobs"),
])
def test_bad_constraints_are_invalid_argument(tiny_daemon: Daemon, fields: dict,
                                              expected: str) -> None:
    with tiny_daemon.client() as c:
        with pytest.raises(grpc.RpcError) as info:
            c.complete("x", max_tokens=5, **fields)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert expected in info.value.details()
        assert c.complete("x", max_tokens=2, temperature=0.0)[2].usage.completion_tokens == 2


def test_logprobs_arrive_with_every_token(tiny_daemon: Daemon) -> None:
    with tiny_daemon.client() as c:
        chunks = list(c.generate("the clinic", max_tokens=30, temperature=0.7, seed=1,
                                 ignore_eos=True, logprobs=True, top_logprobs=3))
    tokens = [t for ch in chunks for t in ch.token_ids]
    lps = [lp for ch in chunks for lp in ch.logprobs]
    assert len(tokens) == len(lps) == 30
    for tok, lp in zip(tokens, lps, strict=True):
        assert lp.token_id == tok and lp.logprob <= 0.0
        assert len(lp.top_logprobs) == 3
        assert sum(math.exp(t.logprob) for t in lp.top_logprobs) <= 1.0 + 1e-5
    assert "".join(lp.token for lp in lps).strip()
