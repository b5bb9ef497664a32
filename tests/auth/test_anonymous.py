"""SECURITY-CASES 27: callers without credentials may use models but not
manage them, unless the config grants it explicitly."""
from __future__ import annotations

import pytest

from runtime import errors
from runtime.auth.authenticator import Authenticator
from runtime.config import AuthConfig, parse_config


def test_anonymous_callers_are_not_admins_by_default() -> None:
    """Fails on e3a5e70: the anonymous principal was an admin."""
    caller = Authenticator(AuthConfig(), {}, None).authenticate_http(None)
    assert caller.anonymous and caller.may_use("any-model")
    with pytest.raises(errors.PermissionDenied, match="anonymous_admin = true"):
        caller.check_admin("load models")


def test_the_config_grants_anonymous_admin_explicitly() -> None:
    """Fails on e3a5e70: [auth] anonymous_admin was an unknown key."""
    config = parse_config({"auth": {"anonymous_admin": True}})
    caller = Authenticator(config.auth, {}, None).authenticate_http(None)
    assert caller.anonymous and caller.admin
    with pytest.raises(errors.ConfigError, match=r"^auth\.anonymous_admin: must be true or"):
        parse_config({"auth": {"anonymous_admin": "yes"}})
