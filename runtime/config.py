"""hearth.toml: what the daemon listens on, which models it serves, limits.

Every key is checked: unknown keys, wrong types and out-of-range values are a
ConfigError whose message starts with the dotted path of the key, e.g.
`models.gemma.n_ctx: must be an integer >= 16, got -1`.

    [server]
    listen = ["127.0.0.1:50051", "unix:/run/hearth/hearth.sock"]
    max_receive_message_bytes = 4194304
    max_send_message_bytes = 16777216
    grace_period_s = 30.0
    max_tokens_default = 512
    models_dir = "/var/lib/hearth/models"     # Models.Load(name) -> <name>.gguf
    log_format = "text"                       # or "json"
    log_level = "info"
    http_listen = "127.0.0.1:8080"            # OpenAI-compatible HTTP API; "" = off

    [models.gemma]                            # [models.<name>]
    path = "/var/lib/hearth/models/gemma-3-270m-q4_k_m.gguf"
    n_ctx = 16384                             # total KV cells, split over slots
    n_parallel = 8                            # slots: requests decoded together
    n_gpu_layers = "auto"                     # or an integer; -1 = all
    threads = 8
    load = true                               # load at start
    draft = "/var/lib/hearth/models/draft.gguf" # speculative decoding (optional)
    adapters = { clinic = "clinic-lora.gguf" } # LoRA adapters requests may name
    cache_type_k = "q8_0"                     # KV-cache quantization (f16, q8_0, q4_0)
    rpc_workers = ["10.8.0.2:50052"]          # ggml RPC workers over WireGuard: they take
    tensor_split = [1.0, 1.0]                 # n_gpu_layers, split over their devices and
                                              # local GPUs (docs/scale-out.md)

    [federation]                              # a site's privacy floor (docs/federation.md)
    min_noise_multiplier = 1.0                # plans with less DP noise are refused
    max_epsilon = 8.0                         # over every plan this site answered
    max_rounds_per_day = 4                    # 0 = no limit
    report_alarms = true                      # signed drift alarms to the coordinator
    report_dir = "/media/usb/reports"         # air-gapped: .hreport files instead
    coordinator = "fed.example.org:7443"      # overrides the kit's address
    auto_apply = true                         # fetch, check, hot-swap new releases
    model = "gemma"                           # the model serving the base model
    rollback_after = 100                      # sampled requests before judging a release
    rollback_margin = 0.05                    # nats of prompt NLL: worse -> roll back
    training_windows = ["22:00-06:00", "below 200 g/kWh"]  # train only then, else defer

    [drift]                                   # drift watch on live traffic (docs/drift.md)
    enabled = true                            # or `hearth serve --drift`
    sample_fraction = 0.1                     # requests whose signals are computed
    reference_size = 500                      # first sampled requests of a version
    window = 200                              # live sampled requests compared to it
    stride = 10                               # evaluate every this many
    ert_requests = 10000                      # expected requests between false alarms
    signals = ["prompt_nll", "first_token_entropy", "prompt_embedding"]  # or more
    nll_rows = 64                             # logits rows per step for prompt NLL
    embedding_dims = 32                       # projected size of the prompt embedding
    retain_for_training = false               # keep sampled prompts (docs/drift.md)
    retention_days = 30                       # then shredded

    [coordinator]                             # `hearth fed coordinator --serve`: when rounds
    every_s = 86400.0                         # run (docs/federation.md); 0 = no fixed period
    daily_at = ["02:00"]                      # also at these UTC times
    trigger_sites = 2                         # a round when this many sites alarmed ...
    trigger_window_s = 3600.0                 # ... within this many seconds; 0 sites = off
    min_interval_s = 3600.0                   # between the starts of two rounds
    max_rounds_per_day = 4                    # in any 24 hours; 0 = no limit
    report_max_age_s = 86400.0                # older site reports are refused
    window_max_delay_s = 21600.0              # a scheduled round waits for sites' training
                                              # windows at most this long; 0 = never

    [energy]                                  # energy per request (docs/energy.md)
    enabled = true
    cpu_watts = 65.0                          # package power at full load, for the estimate
    powercap_root = "/sys/class/powercap"     # RAPL counters (the udev rule grants read)
    grid_g_per_kwh = 300                      # gCO2e/kWh, or [{from="00:00", to="07:00",
                                              #   g=180}, ...] covering the day once
    window_s = 1.0                            # meter window (cut short when a request ends)
    gpu = true                                # NVML energy counters when a GPU is present

    [audit]
    retention_days = 183                      # older records are crypto-shredded

    [report]                                  # the operator's text in `hearth report`
    provider = "Example Clinic IT"            # (docs/transparency.md); a key left out is
    contact = "ai-officer@example.org"        # reported as missing, never invented
    intended_purpose = "..."
"""
from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from runtime.config_values import (
    check_config_name,
    check_value,
    is_local_address,
    unknown_key,
)
from runtime.errors import ConfigError
from runtime.sources import Source, StoredSource

DEFAULT_LISTEN = "127.0.0.1:50051"

def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ModelConfig:
    name: str
    path: str = ""                  # a GGUF file, or "" with store = true
    store: bool = False             # serve the model of this name from the sealed store
    n_ctx: int = 8192
    n_parallel: int = 4
    n_batch: int = 512
    n_ubatch: int = 512
    prefill_chunk: int = 512
    max_queue: int = 64
    burst_window_us: int = 3000     # idle engine: wait this long at most for a burst
    threads: int = field(default_factory=default_threads)
    threads_batch: int = 0          # 0 = same as threads
    n_gpu_layers: int | str = "auto"
    main_gpu: int = 0
    flash_attn: str = "auto"        # auto | on | off
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    kv_unified: bool = True
    swa_full: bool = False
    use_mmap: bool = True
    use_mlock: bool = False
    embeddings: bool = True
    chat_template: str = ""         # "" = the GGUF's; else a llama.cpp template
                                    # name ("gemma", "chatml", ...) or Jinja text
    draft: Source | None = None     # speculative decoding: a draft GGUF sharing the
                                    # tokenizer (a path or store:NAME); None = none
    n_draft: int = 4                # tokens the draft proposes per step
    draft_exact: bool = True        # with a draft: keep greedy output bit-identical to
                                    # decoding without one (no CPU weight repacking)
    adapters: tuple[tuple[str, Source], ...] = ()  # [models.NAME.adapters] name = "lora.gguf"
    rpc_workers: tuple[str, ...] = ()   # ggml RPC workers ("IPV4:PORT") whose devices take
                                        # n_gpu_layers of this model (docs/scale-out.md)
    tensor_split: tuple[float, ...] = ()  # shares of the offloaded layers per device:
                                          # the workers' devices, then local GPUs
    load: bool = True


@dataclass(frozen=True)
class ServerConfig:
    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    max_receive_message_bytes: int = 4 << 20
    max_send_message_bytes: int = 16 << 20
    grace_period_s: float = 30.0
    max_tokens_default: int = 512
    models_dir: str = ""
    log_format: str = "text"
    log_level: str = "info"
    metrics_listen: str = ""        # HOST:PORT (loopback) for Prometheus; "" = off
    http_listen: str = ""           # HOST:PORT of the OpenAI-compatible HTTP API; "" = off
    audit: bool = True              # with a master key: log every request, sealed
    audit_content: bool = False     # also prompts and responses, per-subject keys
    response_cache_mb: int = 0      # LRU of deterministic answers; 0 = off
    response_cache_shared: bool = False  # one client's cached answer may serve another


@dataclass(frozen=True)
class AuthConfig:
    require: bool = False           # every call needs a token, a client cert or the socket
    admins: tuple[str, ...] = ()    # identities that may load/unload (uid:N, cert:CN, ...)
    anonymous_admin: bool = False   # callers without credentials (require = false, loopback
                                    # TCP or HTTP) may also load, unload and set adapters
    socket_mode: str = "0660"       # permissions of unix listen sockets


@dataclass(frozen=True)
class TlsConfig:
    listen: tuple[str, ...] = ()    # addresses served with TLS
    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""        # set: clients need a certificate from this CA (mTLS)


@dataclass(frozen=True)
class FederationConfig:
    """A federation site's privacy floor: `hearth fed participate` and
    `export-update` refuse weaker plans before any training."""

    min_noise_multiplier: float = 0.0
    max_epsilon: float = math.inf
    max_rounds_per_day: int = 0     # 0 = no limit
    # The daemon's part (runtime/federation/site_agent.py), for a joined site:
    report_alarms: bool = False     # drift alarms go to the coordinator, signed
    report_dir: str = ""            # air-gapped: write signed .hreport files here instead
    coordinator: str = ""           # HOST:PORT, overriding the kit's address
    auto_apply: bool = False        # fetch, check and hot-swap new releases
    model: str = ""                 # the model serving the base ("": the base model's file)
    adapter: str = ""               # the adapter name requests use ("": fed-<federation>)
    rollback_after: int = 100       # sampled requests under a new release before judging it
    rollback_margin: float = 0.05   # nats of prompt NLL worse than the previous: roll back
    release_wait_s: float = 300.0   # one long poll for a new release
    # When `hearth fed participate` may train (runtime/energy/windows.py):
    # "HH:MM-HH:MM" local time ranges and/or "below N g/kWh" against
    # [energy] grid_g_per_kwh; () = any time.  Outside them it defers.
    training_windows: tuple[str, ...] = ()


@dataclass(frozen=True)
class DriftConfig:
    """The drift monitor (runtime/drift/).  The signal names are checked
    against runtime/drift/signals.py when the daemon builds its monitor
    (drift sits above config, so the table is not imported here)."""

    enabled: bool = False
    sample_fraction: float = 0.1
    reference_size: int = 500
    window: int = 200
    stride: int = 10
    ert_requests: int = 10_000
    signals: tuple[str, ...] = ("prompt_nll", "first_token_entropy", "prompt_embedding")
    nll_rows: int = 64
    embedding_dims: int = 32
    queue: int = 10_000             # events waiting for the drift worker; more are dropped
    # Off by default: keeps sampled prompts, sealed per subject (drift/retain.py)
    retain_for_training: bool = False
    retention_days: int = 30


@dataclass(frozen=True)
class CoordinatorConfig:
    """When `hearth fed coordinator --serve` starts a round: on a schedule,
    or when enough sites report drift (runtime/federation/policy.py
    decides; these are its inputs)."""

    every_s: float = 0.0            # seconds from one round's start to the next; 0 = off
    daily_at: tuple[str, ...] = ()  # "HH:MM" UTC: a round at each (a missed one runs late)
    trigger_sites: int = 0          # distinct sites alarmed within the window; 0 = off
    trigger_window_s: float = 3600.0
    min_interval_s: float = 3600.0  # between round starts, whatever asks for one
    max_rounds_per_day: int = 0     # round starts in any 24 hours; 0 = no limit
    report_max_age_s: float = 86400.0   # a site report older than this is refused
    # A scheduled round (not a drift-triggered one) waits up to this long for
    # the time most sites are inside their training windows; 0 = never waits
    window_max_delay_s: float = 0.0


@dataclass(frozen=True)
class ExplainConfig:
    """Explanations (Inference.Explain, runtime/core/explain.py): the most
    segments one request may have (each costs a prefill), and the default
    length of the greedy answer explained."""

    max_segments: int = 256
    answer_tokens: int = 32


@dataclass(frozen=True)
class EnergyConfig:
    """Energy accounting (runtime/energy/).  grid_g_per_kwh is checked in
    full by runtime/energy/carbon.py when the daemon builds its accountant
    (energy sits above config); here only its shape."""

    enabled: bool = True
    cpu_watts: float = 65.0
    powercap_root: str = "/sys/class/powercap"
    grid_g_per_kwh: float | tuple[dict[str, Any], ...] = 0.0
    window_s: float = 1.0
    gpu: bool = True


@dataclass(frozen=True)
class AuditConfig:
    """The audit log's retention (runtime/storage/audit.py prunes)."""

    retention_days: int = 183       # EU AI Act Art. 19: at least six months


@dataclass(frozen=True)
class ReportConfig:
    """The operator's own text for `hearth report` (EU AI Act Art. 13(3));
    "" = not given, which the report marks as missing."""

    provider: str = ""              # (a) who provides / deploys the system
    contact: str = ""               # (a) contact details
    intended_purpose: str = ""      # (b)(i)
    out_of_scope_uses: str = ""     # (b)(iii) misuse, uses it is not for
    known_risks: str = ""           # (b)(iii) foreseeable risks
    training_data: str = ""         # (b)(vi) what the model and adapters learnt from
    output_interpretation: str = "" # (b)(vii) how to read the output
    predetermined_changes: str = "" # (c) changes planned at the initial assessment
    human_oversight: str = ""       # (d) Art. 14 measures
    expected_lifetime: str = ""     # (e)
    maintenance: str = ""           # (e) care and updates
    license: str = ""               # the model card's licence
    language: str = ""              # the model card's language(s), e.g. "en"


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    models: dict[str, ModelConfig] = field(default_factory=dict)
    auth: AuthConfig = field(default_factory=AuthConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    acl: dict[str, tuple[str, ...]] = field(default_factory=dict)  # identity -> models
    federation: FederationConfig = field(default_factory=FederationConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    coordinator: CoordinatorConfig = field(default_factory=CoordinatorConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


def check_listeners(config: Config) -> None:
    """Plain TCP beyond loopback needs tokens to be required; TLS needs client
    certificates or required tokens.  Checked at start and on every reload
    (which must not loosen authentication under a listener already bound)."""
    auth, tls = config.auth, config.tls
    for addr in config.server.listen:
        if not addr.startswith("unix:") and not is_local_address(addr) and not auth.require:
            raise ConfigError(
                f"server.listen: refusing to listen on {addr} without authentication: "
                "set auth.require = true (bearer tokens), serve it with TLS and client "
                "certificates ([tls] listen, client_ca_file), or use 127.0.0.1:PORT or "
                "unix:PATH")
    http = config.server.http_listen
    if http and not is_local_address(http) and not auth.require:
        # HTTP has only bearer tokens (no client certificates, no socket uid)
        raise ConfigError(
            f"server.http_listen: refusing to listen on {http} without authentication: "
            "set auth.require = true (bearer tokens) or use 127.0.0.1:PORT")
    if tls.listen and not tls.client_ca_file and not auth.require:
        raise ConfigError(
            "tls: without client_ca_file (mTLS), TLS listeners need auth.require = "
            "true, or anyone who reaches the port could call")


def _build(cls: type, path: str, table: dict[str, Any], **fixed: Any) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{path.rstrip('.')}: must be a table")
    known = {f.name: f for f in fields(cls) if f.name not in fixed}
    defaults = cls(**fixed)
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise unknown_key(path, key, list(known))
        values[key] = check_value(path, key, value, getattr(defaults, key))
    return replace(defaults, **values)


def _check_drift(drift: DriftConfig) -> None:
    if drift.window > drift.reference_size:
        raise ConfigError(f"drift.window: must not exceed drift.reference_size "
                          f"({drift.reference_size}), got {drift.window}")


def _check_coordinator(coordinator: CoordinatorConfig) -> None:
    for key in ("every_s", "trigger_window_s", "min_interval_s", "report_max_age_s",
                "window_max_delay_s"):
        value = getattr(coordinator, key)
        if not math.isfinite(value) or (value == 0 and key.startswith(("trigger", "report"))):
            raise ConfigError(f"coordinator.{key}: must be a finite number "
                              f"{'> 0' if key.startswith(('trigger', 'report')) else '>= 0'}, "
                              f"got {value!r}")


def _check_explain(explain: ExplainConfig) -> None:
    if not 1 <= explain.max_segments <= 4096 or explain.answer_tokens < 1:
        raise ConfigError("explain: max_segments must be in 1..4096 and answer_tokens >= 1")


# The plain [section] tables: the dataclass whose fields are the section's
# keys, and the checks across keys.  A new section is one line here and its
# field in Config.
_SECTIONS: dict[str, tuple[type, Callable[[Any], None] | None]] = {
    "federation": (FederationConfig, None),
    "drift": (DriftConfig, _check_drift),
    "coordinator": (CoordinatorConfig, _check_coordinator),
    "explain": (ExplainConfig, _check_explain),
    "energy": (EnergyConfig, None),
    "audit": (AuditConfig, None),
    "report": (ReportConfig, None),
}


def parse_config(data: dict[str, Any], base_dir: Path | None = None) -> Config:
    """Validates a parsed TOML document.  Relative model paths are resolved
    against base_dir (the config file's folder)."""
    known = [f.name for f in fields(Config)]
    for key in data:
        if key not in known:
            raise unknown_key("", key, known)
    server = _build(ServerConfig, "server.", data.get("server", {}))
    auth = _build(AuthConfig, "auth.", data.get("auth", {}))
    tls = _build(TlsConfig, "tls.", data.get("tls", {}))
    if base_dir is not None:
        tls = replace(tls, **{k: str((base_dir / getattr(tls, k)).resolve())
                              for k in ("cert_file", "key_file", "client_ca_file")
                              if getattr(tls, k) and not os.path.isabs(getattr(tls, k))})
    acl = _acl(data.get("acl", {}))
    sections: dict[str, Any] = {}
    for name, (cls, check) in _SECTIONS.items():
        sections[name] = _build(cls, f"{name}.", data.get(name, {}))
        if check is not None:
            check(sections[name])
    models: dict[str, ModelConfig] = {}
    tables = data.get("models", {})
    if not isinstance(tables, dict):
        raise ConfigError("models: must be a table of [models.NAME] tables")
    for name, table in tables.items():
        check_config_name(name, f"models.{name}")
        model = _build(ModelConfig, f"models.{name}.", table, name=name)
        if not model.path and not model.store:
            raise ConfigError(f"models.{name}.path: missing (the GGUF file to serve, or set "
                              "store = true to serve the sealed model of this name)")
        if model.path and model.store:
            raise ConfigError(f"models.{name}.store: a model comes from a path or from the "
                              "store, not both")
        if base_dir is not None and not os.path.isabs(model.path):
            model = replace(model, path=str((base_dir / model.path).resolve()))
        if base_dir is not None:
            model = replace(model, adapters=tuple(
                (n, s.resolved_against(base_dir)) for n, s in model.adapters),
                draft=model.draft and model.draft.resolved_against(base_dir))
        validate_model(model, f"models.{name}.")
        models[name] = model
    if server.models_dir and base_dir is not None and not os.path.isabs(server.models_dir):
        server = replace(server, models_dir=str((base_dir / server.models_dir).resolve()))
    return Config(server=server, models=models, auth=auth, tls=tls, acl=acl,
                  **sections)


def _acl(table: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(table, dict):
        raise ConfigError("acl: must be a table of identity = [models]")
    acl = {}
    for identity, models in table.items():
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise ConfigError(f"acl.{identity}: must be a list of model names (or [\"*\"])")
        for m in models:
            if m != "*":
                check_config_name(m, f"acl.{identity}")
        acl[identity] = tuple(models)
    return acl


def validate_model(m: ModelConfig, path: str) -> None:
    """Cross-field checks, also applied to command-line overrides."""
    if m.n_ctx < 16 * m.n_parallel:
        raise ConfigError(f"{path}n_ctx: {m.n_ctx} leaves fewer than 16 tokens for each of "
                          f"{m.n_parallel} slots (n_parallel)")
    if m.n_batch < m.n_parallel:
        raise ConfigError(f"{path}n_batch: must be >= n_parallel ({m.n_parallel}), "
                          f"got {m.n_batch}")
    if m.n_ubatch > m.n_batch:
        raise ConfigError(f"{path}n_ubatch: must be <= n_batch ({m.n_batch}), got {m.n_ubatch}")
    if not 1 <= m.n_draft <= 16:
        raise ConfigError(f"{path}n_draft: must be in 1..16, got {m.n_draft}")
    if isinstance(m.draft, StoredSource):
        check_config_name(m.draft.name, f"{path}draft")


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(data, base_dir=path.parent)
