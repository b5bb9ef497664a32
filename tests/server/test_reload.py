"""What a reload may change live, and what it must refuse."""
from __future__ import annotations

from dataclasses import replace

import pytest

from runtime import errors
from runtime.config import AuthConfig, Config, ServerConfig, TlsConfig, check_listeners
from runtime.reload import effective_config


def test_restart_only_settings_keep_their_running_values() -> None:
    old = Config(server=ServerConfig(listen=("127.0.0.1:1",), grace_period_s=30))
    new = Config(server=ServerConfig(listen=("127.0.0.1:2",), grace_period_s=5,
                                     max_tokens_default=99, log_level="debug"),
                 auth=AuthConfig(require=True, admins=("uid:5",), socket_mode="0666"),
                 tls=TlsConfig(listen=("127.0.0.1:3",)), acl={"uid:5": ("m",)})
    config, changed = effective_config(old, new)
    assert set(changed) == {"server.listen", "server.grace_period_s", "tls", "auth.socket_mode"}
    assert config.server.listen == ("127.0.0.1:1",) and config.server.grace_period_s == 30
    assert config.tls == old.tls and config.auth.socket_mode == old.auth.socket_mode
    # live ones come from the new file
    assert config.server.max_tokens_default == 99 and config.server.log_level == "debug"
    assert config.auth.require and config.auth.admins == ("uid:5",)
    assert config.acl == {"uid:5": ("m",)}


def test_nothing_changed_reports_nothing() -> None:
    assert effective_config(Config(), Config())[1] == []


def test_a_reload_may_not_drop_auth_under_an_open_listener() -> None:
    running = Config(server=ServerConfig(listen=("0.0.0.0:50051",)),
                     auth=AuthConfig(require=True))
    check_listeners(running)
    loosened, _ = effective_config(running, replace(running, auth=AuthConfig(require=False)))
    with pytest.raises(errors.ConfigError, match="without authentication"):
        check_listeners(loosened)


def test_tls_without_client_certificates_needs_tokens() -> None:
    config = Config(tls=TlsConfig(listen=("0.0.0.0:1",), cert_file="c", key_file="k"))
    with pytest.raises(errors.ConfigError, match="client_ca_file"):
        check_listeners(config)
    check_listeners(replace(config, auth=AuthConfig(require=True)))
    check_listeners(replace(config, tls=replace(config.tls, client_ca_file="ca")))
