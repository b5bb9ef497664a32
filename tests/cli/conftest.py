"""The CLI tests talk to the same real daemon as the integration tests."""
from tests.integration.conftest import daemon_factory, tiny_daemon  # noqa: F401
