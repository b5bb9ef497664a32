"""Where the HTTP gateway may listen: off by default, loopback unless
tokens are required, HOST:PORT only, and a restart-only setting."""
from __future__ import annotations

import argparse

import pytest

from runtime.cli.serve import add_arguments, build_config
from runtime.config import AuthConfig, Config, ServerConfig, check_listeners, parse_config
from runtime.errors import ConfigError
from runtime.reload import effective_config


def config(http_listen: str, require: bool = False) -> Config:
    return Config(server=ServerConfig(http_listen=http_listen), auth=AuthConfig(require=require))


def test_off_by_default() -> None:
    assert Config().server.http_listen == ""
    assert parse_config({}).server.http_listen == ""


@pytest.mark.parametrize("addr", ["127.0.0.1:0", "127.0.0.1:8080", "localhost:8080",
                                  "[::1]:8080", ""])
def test_loopback_needs_no_auth(addr: str) -> None:
    check_listeners(config(addr))


@pytest.mark.parametrize("addr", ["0.0.0.0:8080", "[::]:8080", "10.0.0.5:8080",
                                  "gateway.example:8080"])
def test_beyond_loopback_needs_required_tokens(addr: str) -> None:
    with pytest.raises(ConfigError, match=r"^server\.http_listen: refusing to listen on"):
        check_listeners(config(addr))
    check_listeners(config(addr, require=True))


def cli(*argv: str) -> Config:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return build_config(parser.parse_args(list(argv)))[0]


def test_the_command_line_flag() -> None:
    assert cli("--http-listen", "127.0.0.1:8080").server.http_listen == "127.0.0.1:8080"
    assert cli().server.http_listen == ""
    for bad in ("unix:/run/h.sock", "8080", "host:port"):
        with pytest.raises(ConfigError, match=r"^--http-listen: "):
            cli("--http-listen", bad)


def test_reload_keeps_the_running_listener() -> None:
    running = config("127.0.0.1:8080")
    effective, changed = effective_config(running, config("127.0.0.1:9090"))
    assert effective.server.http_listen == "127.0.0.1:8080"
    assert changed == ["server.http_listen"]
    # turning tokens off under a bound open listener is refused at reload
    open_listener = config("0.0.0.0:8080", require=True)
    effective, _ = effective_config(open_listener, config("0.0.0.0:8080", require=False))
    with pytest.raises(ConfigError):
        check_listeners(effective)
