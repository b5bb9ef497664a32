"""hearth.toml validation: every error names the key."""
from __future__ import annotations

from pathlib import Path

import pytest

from runtime.config import load_config, parse_config
from runtime.errors import ConfigError


def test_full_config(tmp_path: Path) -> None:
    (tmp_path / "hearth.toml").write_text("""
[server]
listen = ["127.0.0.1:6000", "unix:/tmp/h.sock"]
max_receive_message_bytes = 65536
grace_period_s = 5
models_dir = "store"
log_format = "json"

[models.gemma]
path = "models/g.gguf"
n_ctx = 8192
n_parallel = 8
n_gpu_layers = "auto"
threads = 2
cache_type_k = "q8_0"
""")
    cfg = load_config(tmp_path / "hearth.toml")
    assert cfg.server.listen == ("127.0.0.1:6000", "unix:/tmp/h.sock")
    assert cfg.server.grace_period_s == 5.0
    assert cfg.server.models_dir == str(tmp_path / "store")
    g = cfg.models["gemma"]
    assert g.path == str(tmp_path / "models/g.gguf")
    assert (g.n_ctx, g.n_parallel, g.n_gpu_layers, g.cache_type_k) == (8192, 8, "auto", "q8_0")


@pytest.mark.parametrize(("doc", "message"), [
    ({"server": {"lisen": "x"}}, r"^server\.lisen: unknown key \(did you mean 'listen'\?\)"),
    ({"servers": {}}, r"^servers: unknown key"),
    ({"server": {"listen": "0.0.0.0"}}, r"^server\.listen: '0\.0\.0\.0' is not HOST:PORT"),
    ({"server": {"listen": []}}, r"^server\.listen: must name at least one address"),
    ({"server": {"grace_period_s": -1}}, r"^server\.grace_period_s: must be a number >= 0"),
    ({"server": {"http_listen": "8080"}}, r"^server\.http_listen: '8080' is not HOST:PORT"),
    ({"server": {"http_listen": "unix:/run/h.sock"}}, r"^server\.http_listen: must be HOST:PORT"),
    ({"server": {"http_listen": 8080}}, r"^server\.http_listen: must be HOST:PORT"),
    ({"server": {"log_format": "xml"}}, r"^server\.log_format: must be one of text, json"),
    ({"server": {"max_receive_message_bytes": 10}}, r"^server\.max_receive_message_bytes: "),
    ({"models": {"g": {"path": "x", "n_ctx": -1}}}, r"^models\.g\.n_ctx: must be an integer"),
    ({"models": {"g": {"path": "x", "n_ctx": "big"}}}, r"^models\.g\.n_ctx: must be an integer"),
    ({"models": {"g": {"path": "x", "use_mmap": 1}}}, r"^models\.g\.use_mmap: must be true"),
    ({"models": {"g": {"path": "x", "n_gpu_layers": "most"}}}, r"^models\.g\.n_gpu_layers: "),
    ({"models": {"g": {"path": "x", "cache_type_v": "q2"}}}, r"^models\.g\.cache_type_v: must"),
    ({"models": {"g": {"path": "x", "n_ctx": 32, "n_parallel": 4}}}, r"^models\.g\.n_ctx: 32"),
    ({"models": {"g": {"path": "x", "n_batch": 2, "n_parallel": 4}}}, r"^models\.g\.n_batch"),
    ({"models": {"g": {"n_ctx": 1024}}}, r"^models\.g\.path: missing"),
    ({"models": {"g": {"path": "x", "nctx": 1}}}, r"^models\.g\.nctx: unknown key"),
    ({"models": {"../etc": {"path": "x"}}}, r"^models\.\.\./etc: '\.\./etc' is not a valid name"),
    ({"models": {"g": 3}}, r"^models\.g: must be a table"),
])
def test_errors_name_the_key(doc: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(doc)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nlisten = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_the_shipped_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parent.parent / "packaging" / "hearth.example.toml"
    cfg = load_config(example)
    assert cfg.server.log_format == "json"
    assert cfg.models["gemma3-270m"].n_parallel == 8
