"""Named adapters through hearth.v1, OpenAI HTTP and Triton's sampling
parameters, from the daemon's config file."""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import grpc
import pytest

from runtime.models.tiny import write_tiny_lora
from tests.integration.conftest import start_daemon


def test_requests_name_an_adapter(tmp_path: Path, tiny_model: Path) -> None:
    lora = write_tiny_lora(tmp_path / "clinic.gguf")
    config = tmp_path / "hearth.toml"
    config.write_text(f'''
[server]
listen = ["127.0.0.1:0"]
http_listen = "127.0.0.1:0"

[models.tiny]
path = "{tiny_model}"
n_ctx = 2048
n_parallel = 2
threads = 1

[models.tiny.adapters]
clinic = "{lora.name}"
''')
    d = start_daemon(["--config", str(config)], tmp_path)
    try:
        with d.client() as c:
            base = c.complete("the patient", max_tokens=30, temperature=0.0, ignore_eos=True)
            tuned = c.complete("the patient", max_tokens=30, temperature=0.0, ignore_eos=True,
                               adapter="clinic")
            assert base[1] != tuned[1]
            with pytest.raises(grpc.RpcError) as info:
                c.complete("the patient", max_tokens=3, adapter="nope")
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert "has no adapter 'nope'" in info.value.details()
        http = json.loads(next(tmp_path.glob("ready-*.json")).read_text())["http"]
        body = json.dumps({"model": "tiny", "prompt": "the patient", "max_tokens": 30,
                           "temperature": 0, "ignore_eos": True, "adapter": "clinic"}).encode()
        req = urllib.request.Request(f"http://{http}/v1/completions", body,
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert json.loads(resp.read())["choices"][0]["text"] == tuned[0]
    finally:
        assert d.stop() == 0, d.log()


def test_sealed_adapters_and_data_sets_come_from_the_store(tmp_path: Path, tiny_model: Path
                                                           ) -> None:
    from tests.integration.test_sealed_serving import hearth

    state, key = tmp_path / "state", tmp_path / "master.key"
    common = ["--state-dir", str(state), "--key-file", str(key)]
    hearth("keys", "init", *common)
    lora = write_tiny_lora(tmp_path / "clinic.gguf")
    hearth("models", "import", str(lora), "--name", "clinic", "--kind", "adapter", *common)
    notes = tmp_path / "notes.txt"
    notes.write_text("Patient seen for follow-up. Blood pressure normal.\n" * 50)
    out = hearth("data", "add", "clinic-notes", str(notes), *common).stdout
    assert "added data set clinic-notes version 1" in out
    bad = hearth("data", "add", "../escape", str(notes), *common, check=False)
    assert bad.returncode != 0 and "valid name" in bad.stderr
    listing = hearth("store", "list", *common).stdout
    assert "dataset  clinic-notes" in listing and "adapter  clinic" in listing

    config = tmp_path / "hearth.toml"
    config.write_text(f'''
[server]
listen = ["127.0.0.1:0"]

[models.tiny]
path = "{tiny_model}"
n_ctx = 2048
n_parallel = 2
threads = 1

[models.tiny.adapters]
clinic = "store:clinic"
plain = "{lora}"
''')
    d = start_daemon(["--config", str(config), *common], tmp_path)
    try:
        with d.client() as c:
            sealed = c.complete("the patient", max_tokens=20, temperature=0.0, ignore_eos=True,
                                adapter="clinic")
            plain = c.complete("the patient", max_tokens=20, temperature=0.0, ignore_eos=True,
                               adapter="plain")
            base = c.complete("the patient", max_tokens=20, temperature=0.0, ignore_eos=True)
        assert sealed[1] == plain[1] != base[1]
    finally:
        assert d.stop() == 0, d.log()
