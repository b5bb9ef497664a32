"""The shared tiny daemon of the integration tests serves these too."""
from tests.integration.conftest import tiny_daemon  # noqa: F401
