"""What each hearth.toml value may be: the checks runtime/config.py applies key by key.

Each check raises a ConfigError whose message starts with the key's dotted path.  The
address checks and the training-window grammar are also used by the command line and
by runtime/energy/windows.py, so they live here, once.
"""
from __future__ import annotations

import difflib
import ipaddress
import re
from typing import Any

from runtime.errors import ConfigError, InvalidArgument
from runtime.names import check_name
from runtime.sources import Source, StoredSource, parse_source

# The grammar of [federation] training_windows entries, here so that the
# config check and runtime/energy/windows.py read them alike.
_HHMM = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]"
TIME_RANGE = re.compile(rf"({_HHMM})-({_HHMM})")
BELOW_G_PER_KWH = re.compile(r"below ([0-9]{1,6}(?:\.[0-9]{1,6})?) g/kWh")


def check_config_name(name: str, where: str) -> str:
    """runtime.names.check_name for a name read from the config or the
    command line: a bad one is a ConfigError naming the key or option."""
    try:
        return check_name(name, where)
    except InvalidArgument as exc:
        raise ConfigError(str(exc)) from None


def check_source(text: str, where: str) -> Source:
    """A source's text form (a path, or store:NAME) as a typed reference."""
    source = parse_source(text)
    if isinstance(source, StoredSource):
        check_config_name(source.name, where)
    return source


_INT_RANGES: dict[str, tuple[int, int]] = {
    "n_ctx": (16, 1 << 24), "n_parallel": (1, 256), "n_batch": (1, 1 << 16),
    "n_ubatch": (1, 1 << 16), "prefill_chunk": (1, 1 << 16), "max_queue": (0, 1 << 16),
    "threads": (1, 1024), "threads_batch": (0, 1024), "main_gpu": (0, 64),
    "max_receive_message_bytes": (1024, 1 << 30), "max_send_message_bytes": (1024, 1 << 30),
    "max_tokens_default": (1, 1 << 24), "burst_window_us": (0, 1_000_000),
    "response_cache_mb": (0, 1 << 20), "n_draft": (1, 16), "max_rounds_per_day": (0, 1_000_000),
    "reference_size": (20, 1 << 20), "window": (10, 1 << 20), "stride": (1, 1 << 16),
    "ert_requests": (100, 1 << 40), "nll_rows": (0, 256), "embedding_dims": (1, 64),
    "queue": (1, 1 << 24), "trigger_sites": (0, 1_000_000),
    "rollback_after": (1, 1 << 24), "retention_days": (1, 36_500),
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "flash_attn": ("auto", "on", "off"), "cache_type_k": ("f16", "f32", "q8_0", "q4_0"),
    "cache_type_v": ("f16", "f32", "q8_0", "q4_0"), "log_format": ("text", "json"),
    "log_level": ("debug", "info", "warning", "error"),
}


def unknown_key(path: str, key: str, known: list[str]) -> ConfigError:
    hint = difflib.get_close_matches(key, known, n=1)
    suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
    return ConfigError(f"{path}{key}: unknown key{suffix}")


def check_value(path: str, key: str, value: Any, default: Any) -> Any:
    where = f"{path}{key}"
    if key == "n_gpu_layers":
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool)
                               and value >= -1):
            return value
        raise ConfigError(f"{where}: must be \"auto\" or an integer >= -1, got {value!r}")
    if key == "listen":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(x, str) and x
                                                          for x in items):
            raise ConfigError(f"{where}: must be an address or a list of addresses")
        if not items and path == "server.":
            raise ConfigError(f"{where}: must name at least one address")
        for addr in items:
            check_listen_address(addr, where)
        return tuple(items)
    if key in ("metrics_listen", "http_listen"):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: must be HOST:PORT")
        if value:
            check_listen_address(value, where)
            if value.startswith("unix:"):
                raise ConfigError(f"{where}: must be HOST:PORT")
        return value
    if key == "adapters":
        if not isinstance(value, dict) or not all(
                isinstance(v, str) and v for v in value.values()):
            raise ConfigError(f"{where}: must be a table of adapter name = \"path.gguf\"")
        for name in value:
            check_config_name(name, f"{where}.{name}")
        return tuple((name, check_source(value[name], f"{where}.{name}"))
                     for name in sorted(value))
    if key == "draft":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: must be a path or store:NAME, got {value!r}")
        return check_source(value, where) if value else None
    if key == "sample_fraction":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise ConfigError(f"{where}: must be a number in (0, 1], got {value!r}")
        return float(value)
    if key == "signals":
        if not isinstance(value, list) or not value or not all(
                isinstance(x, str) and x for x in value):
            raise ConfigError(f"{where}: must be a non-empty list of signal names")
        return tuple(value)
    if key == "daily_at":
        if not isinstance(value, list) or not all(
                isinstance(x, str) and re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", x)
                for x in value) or len(set(value)) != len(value):
            raise ConfigError(f"{where}: must be a list of distinct \"HH:MM\" times (UTC)")
        return tuple(sorted(value))
    if key == "rpc_workers":
        if not isinstance(value, list) or not all(
                isinstance(x, str) and re.fullmatch(r"[A-Za-z0-9.-]+:[0-9]{1,5}", x)
                for x in value):
            raise ConfigError(f"{where}: must be a list of \"HOST:PORT\" (IPv4 or a name)")
        if len(value) > 16 or len(set(value)) != len(value):
            raise ConfigError(f"{where}: at most 16 distinct workers")
        return tuple(value)
    if key == "tensor_split":
        if not isinstance(value, list) or not 0 < len(value) <= 16 or not all(
                isinstance(x, int | float) and not isinstance(x, bool) and x >= 0
                for x in value) or not any(value):
            raise ConfigError(f"{where}: must be a list of 1..16 shares >= 0, not all 0")
        return tuple(float(x) for x in value)
    if key == "admins":
        if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
            raise ConfigError(f"{where}: must be a list of identities")
        return tuple(value)
    if key == "training_windows":
        if not isinstance(value, list) or not all(
                isinstance(x, str) and (TIME_RANGE.fullmatch(x) or BELOW_G_PER_KWH.fullmatch(x))
                for x in value):
            raise ConfigError(f"{where}: must be a list of \"HH:MM-HH:MM\" ranges and/or "
                              f"one \"below N g/kWh\", got {value!r}")
        if sum(1 for x in value if BELOW_G_PER_KWH.fullmatch(x)) > 1:
            raise ConfigError(f"{where}: at most one \"below N g/kWh\"")
        return tuple(value)
    if key == "grid_g_per_kwh":
        if isinstance(value, list) and all(isinstance(x, dict) for x in value):
            return tuple(value)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"{where}: must be a number >= 0 or a list of "
                              "{from, to, g} tables")
        return float(value)
    if key in ("cpu_watts", "window_s"):
        lo, hi = (0.1, 60.0) if key == "window_s" else (0.001, 100_000.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            raise ConfigError(f"{where}: must be a number in {lo:g}..{hi:g}, got {value!r}")
        return float(value)
    if key == "coordinator":
        if not isinstance(value, str) or (value and not re.fullmatch(
                r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}", value)):
            raise ConfigError(f"{where}: must be \"HOST:PORT\", got {value!r}")
        return value
    if key in ("model", "adapter") and path == "federation.":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: must be a name, got {value!r}")
        return check_config_name(value, where) if value else value
    if key == "socket_mode":
        if not isinstance(value, str) or not re.fullmatch(r"0?[0-7]{3}", value):
            raise ConfigError(f"{where}: must be an octal mode like \"0660\", got {value!r}")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        lo, hi = _INT_RANGES.get(key, (0, 1 << 62))
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(f"{where}: must be an integer in {lo}..{hi}, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"{where}: must be a number >= 0, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: must be a string, got {value!r}")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise ConfigError(f"{where}: must be one of {', '.join(_CHOICES[key])}, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported value {value!r}")


def check_listen_address(addr: str, where: str = "listen") -> str:
    if addr.startswith("unix-abstract:"):
        # Abstract socket names have no owner and no permissions: any local
        # user can bind one first, or connect from a socket bound to any name.
        raise ConfigError(f"{where}: {addr!r}: abstract unix sockets are refused (any local "
                          "user could claim the name); use unix:PATH, whose directory and "
                          "auth.socket_mode decide who may connect")
    if addr.startswith("unix:"):
        if len(addr) <= len("unix:") or "\0" in addr:
            raise ConfigError(f"{where}: {addr!r} is not a unix socket path")
        return addr
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where}: {addr!r} is not HOST:PORT or unix:PATH")
    return addr


def is_local_address(addr: str) -> bool:
    """unix sockets and loopback hosts; anything else needs authentication."""
    if addr.startswith("unix:"):
        return True
    host = addr.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
