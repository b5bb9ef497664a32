"""ModelRepository: the access rules every face shares (list, get, load,
unload, adapters), without loading a model."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from runtime import errors
from runtime.auth.principal import ANONYMOUS, ANONYMOUS_ADMIN, Principal
from runtime.config import Config, ModelConfig, ServerConfig
from runtime.core.repository import ModelRepository
from runtime.events import EventBus
from runtime.models.manager import ModelHandle, ModelManager, ModelState
from runtime.sources import StoredSource

WARD = Principal("token:ward", frozenset({"tiny"}))
OPS = Principal("token:ops", None, admin=True)


class Recorder(ModelManager):
    """A manager with two ready models (no engines) that records what the
    repository asks it to change."""

    def __init__(self) -> None:
        super().__init__(Config(server=ServerConfig(grace_period_s=7.0)), EventBus())
        for name in ("tiny", "secret"):
            self._models[name] = ModelHandle(name, ModelConfig(name=name, path="x"),
                                             ModelState.READY)
        self.calls: list[tuple[Any, ...]] = []

    async def load_by_name(self, name: str, n_ctx: int | None = None,
                           n_parallel: int | None = None) -> ModelHandle:
        self.calls.append(("load", name, n_ctx, n_parallel))
        return self._models["tiny"]

    async def unload(self, name: str, drain_timeout: float) -> ModelHandle:
        self.calls.append(("unload", name, drain_timeout))
        return self._models[name]

    async def set_adapter(self, model: str, name: str, source: Any) -> ModelHandle:
        self.calls.append(("set_adapter", model, name, source))
        return self._models[model]


def test_callers_see_only_the_models_they_may_use() -> None:
    repo = ModelRepository(Recorder())
    assert [h.name for h in repo.index(WARD).loaded] == ["tiny"]
    assert repo.get("tiny", WARD).name == "tiny"
    with pytest.raises(errors.PermissionDenied):
        repo.get("secret", WARD)
    with pytest.raises(errors.PermissionDenied):
        repo.get("no-such-model", WARD)    # refused before the lookup: no oracle
    with pytest.raises(errors.InvalidArgument) as err:
        repo.get("", WARD)
    assert "tiny" in str(err.value) and "secret" not in str(err.value)


def test_managing_models_needs_an_admin() -> None:
    """Fails on e3a5e70: ANONYMOUS was an admin (the repository did not
    exist there; its check is Principal.check_admin)."""
    manager = Recorder()
    repo = ModelRepository(manager)

    async def main() -> None:
        for caller in (WARD, ANONYMOUS):
            for call in (repo.load("tiny", caller), repo.unload("tiny", caller),
                         repo.set_adapter("tiny", "a", "a", caller),
                         repo.remove_adapter("tiny", "a", caller)):
                with pytest.raises(errors.PermissionDenied):
                    await call
        assert manager.calls == []
        await repo.load("tiny", ANONYMOUS_ADMIN, keep_ready=True)       # ready: nothing to do
        await repo.load("tiny", OPS, n_ctx=64)
        await repo.unload("tiny", OPS)
        await repo.set_adapter("tiny", "clinic", "fed-clinic", OPS)
        with pytest.raises(errors.InvalidArgument):
            await repo.set_adapter("tiny", "clinic", "../x", OPS)
        assert manager.calls == [("load", "tiny", 64, None), ("unload", "tiny", 7.0),
                                 ("set_adapter", "tiny", "clinic", StoredSource("fed-clinic"))]

    asyncio.run(main())
