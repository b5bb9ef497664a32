"""Which models are loaded, loading and unloading them, and their state.

A model is known by name: declared in the config, given on the command line,
or a file <name>.gguf in the models directory.  Names are identifiers; a
name that would leave the models directory (or points there through a
symlink) is refused.  Loading opens each source once and checks its GGUF
header before llama.cpp sees it (opener.py), proves new bytes loadable in a
probe process (probe.py), then builds the native engine off the event loop
from the same descriptors.  Every state change is published as a
ModelStateChanged event (health follows it).
"""
from __future__ import annotations

import asyncio
import enum
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from runtime import errors
from runtime.config import Config, ModelConfig, validate_model
from runtime.engine import EngineSession
from runtime.events import EventBus, ModelStateChanged
from runtime.models.gguf_file import GGUFInfo
from runtime.models.gpu_fit import fit_gpu_layers
from runtime.models.opener import OpenedSource, open_source
from runtime.models.probe import probe
from runtime.names import check_name
from runtime.native import EngineParams, NativeEngine, list_devices
from runtime.sources import FileSource, Source, StoredSource
from runtime.storage.store import Kind, SealedStore

log = logging.getLogger("hearth.models")


class ModelState(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"
    UNLOADED = "unloaded"


@dataclass
class ModelHandle:
    name: str
    config: ModelConfig
    state: ModelState
    engine: NativeEngine | None = None
    session: EngineSession | None = None
    error: str = ""
    load_seconds: float = 0.0
    gpu_reason: str = ""
    chat_template: str | None = None   # None: the model's own (from its GGUF)
    chat_template_source: str = ""
    source: str = ""                    # the file, or the sealed object
    adapters: dict[str, int] = field(default_factory=dict)  # LoRA name -> engine id
    adapter_versions: dict[str, int] = field(default_factory=dict)  # name -> fed release


# Models.Get's chat_template when the model has none and none is configured:
# Chat refuses the model (render_chat says how to configure one).
NO_CHAT_TEMPLATE = "none"


def chat_template_for(cfg: ModelConfig, engine: NativeEngine) -> tuple[str | None, str]:
    """Which chat template Chat uses, and where it comes from.  Base models
    often ship without one (Gemma 3 270M does); they get none, rather than a
    guess, and Chat refuses them until the operator configures one."""
    if cfg.chat_template:
        return cfg.chat_template, "config"
    if engine.meta("tokenizer.chat_template"):
        return None, "gguf"
    return None, NO_CHAT_TEMPLATE


def engine_params(cfg: ModelConfig, info: GGUFInfo | None) -> tuple[EngineParams, str]:
    """Turns a model's config into engine parameters, resolving "auto"
    (which needs the GGUF header when a GPU is present)."""
    n_gpu_layers = cfg.n_gpu_layers
    tensor_split: tuple[float, ...] = cfg.tensor_split
    reason = ""
    if n_gpu_layers == "auto" and cfg.rpc_workers:
        # every layer over the workers and local GPUs, by free memory unless
        # tensor_split says otherwise
        n_gpu_layers, reason = -1, f"all layers over RPC workers {', '.join(cfg.rpc_workers)}"
    elif n_gpu_layers == "auto":
        if info is None:
            n_gpu_layers, reason = 0, "no GPU visible to ggml: running on the CPU"
        else:
            plan = fit_gpu_layers(list_devices(), info, cfg.n_ctx)
            n_gpu_layers, tensor_split, reason = plan.n_gpu_layers, plan.tensor_split, plan.reason
    assert isinstance(n_gpu_layers, int)
    params = EngineParams(
        model_path=cfg.path,
        n_ctx=cfg.n_ctx,
        n_parallel=cfg.n_parallel,
        n_batch=cfg.n_batch,
        n_ubatch=cfg.n_ubatch,
        prefill_chunk=cfg.prefill_chunk,
        max_queue=cfg.max_queue,
        burst_window_us=cfg.burst_window_us,
        n_threads=cfg.threads,
        n_threads_batch=cfg.threads_batch or cfg.threads,
        n_gpu_layers=n_gpu_layers,
        main_gpu=cfg.main_gpu,
        tensor_split=tensor_split,
        flash_attn={"auto": -1, "off": 0, "on": 1}[cfg.flash_attn],
        cache_type_k=cfg.cache_type_k,
        cache_type_v=cfg.cache_type_v,
        kv_unified=cfg.kv_unified,
        swa_full=cfg.swa_full,
        use_mmap=cfg.use_mmap,
        use_mlock=cfg.use_mlock,
        enable_embeddings=cfg.embeddings,
        n_draft=cfg.n_draft,
        repack_weights=not (cfg.draft is not None and cfg.draft_exact),
        draft_n_gpu_layers=-1 if n_gpu_layers != 0 else 0,
        rpc_workers=cfg.rpc_workers,
    )
    return params, reason


class ModelManager:
    def __init__(self, config: Config, events: EventBus, store: SealedStore | None = None
                 ) -> None:
        self.config = config
        self.events = events
        self.store = store
        self._models: dict[str, ModelHandle] = {}
        self._lock = asyncio.Lock()

    # ---- lookup -------------------------------------------------------

    def handles(self) -> list[ModelHandle]:
        return list(self._models.values())

    def available(self) -> list[str]:
        """Names Load accepts that are not loaded."""
        names = set(self.config.models)
        if self.store is not None:
            names |= {o.name for o in self.store.catalog.rows(Kind.MODEL)}
        root = self.config.server.models_dir
        if root and os.path.isdir(root):
            for entry in os.scandir(root):
                stem = entry.name[:-5]
                if entry.name.endswith(".gguf") and entry.is_file(follow_symlinks=False):
                    try:
                        names.add(check_name(stem))
                    except errors.InvalidArgument:
                        continue
        return sorted(names - set(self._models))

    def get(self, name: str | None, visible: Callable[[str], bool] = lambda _: True
            ) -> ModelHandle:
        """The named model in any state.  An empty name means "the only
        model", which is allowed when exactly one is loaded.  The error for
        an ambiguous empty name lists only the models `visible` allows, so a
        caller learns no names its ACL hides."""
        if not name:
            ready = [m for m in self._models.values() if m.state is ModelState.READY]
            if len(ready) == 1:
                return ready[0]
            if not ready:
                raise errors.Unavailable("no model is loaded")
            names = ", ".join(sorted(m.name for m in ready if visible(m.name)))
            raise errors.InvalidArgument("model: required when several models are loaded"
                                         + (f" ({names})" if names else ""))
        handle = self._models.get(name)
        if handle is None:
            raise errors.NotFound(f"model {name!r} is not loaded")
        return handle

    def ready(self, name: str | None, visible: Callable[[str], bool] = lambda _: True
              ) -> ModelHandle:
        handle = self.get(name, visible)
        if handle.state is ModelState.LOADING:
            raise errors.Unavailable(f"model {handle.name!r} is still loading")
        if handle.state is ModelState.DRAINING:
            raise errors.Unavailable(f"model {handle.name!r} is being unloaded")
        if handle.state is not ModelState.READY or handle.session is None:
            raise errors.FailedPrecondition(f"model {handle.name!r} failed to load: {handle.error}")
        return handle

    def resolve(self, name: str) -> ModelConfig:
        """The config of a loadable model, by name."""
        check_name(name, "model name")
        if name in self.config.models:
            return self.config.models[name]
        if self.store is not None and any(r.name == name
                                          for r in self.store.catalog.rows(Kind.MODEL)):
            return ModelConfig(name=name, store=True)
        root = self.config.server.models_dir
        if not root:
            raise errors.NotFound(f"model {name!r} is not configured (and no models_dir is set)")
        base = Path(root).resolve()
        candidate = base / f"{name}.gguf"
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            raise errors.NotFound(f"model {name!r} is not configured and {name}.gguf is not in "
                                  "the models directory") from None
        if not stat.S_ISREG(st.st_mode) or candidate.resolve().parent != base:
            raise errors.InvalidArgument(f"model {name!r}: {name}.gguf is not a regular file in "
                                         "the models directory")
        return ModelConfig(name=name, path=str(candidate))

    # ---- state changes ------------------------------------------------

    def _set_state(self, handle: ModelHandle, state: ModelState, error: str = "") -> None:
        handle.state = state
        handle.error = error
        self.events.publish(ModelStateChanged(handle.name, state.value, error))

    async def load(self, cfg: ModelConfig) -> ModelHandle:
        validate_model(cfg, f"model {cfg.name}: ")
        async with self._lock:
            existing = self._models.get(cfg.name)
            if existing is not None and existing.state is not ModelState.FAILED:
                raise errors.AlreadyExists(f"model {cfg.name!r} is already {existing.state.value}")
            handle = ModelHandle(cfg.name, cfg, ModelState.LOADING)
            self._models[cfg.name] = handle
        self._set_state(handle, ModelState.LOADING)
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        try:
            engine = await loop.run_in_executor(None, self._open_engine, handle)
        except errors.HearthError as exc:
            self._set_state(handle, ModelState.FAILED, str(exc))
            log.error("model %s failed to load: %s", cfg.name, exc)
            if isinstance(exc, errors.IntegrityError):
                raise                       # DATA_LOSS, naming the check that failed
            raise errors.ModelLoadError(f"model {cfg.name!r}: {exc}") from exc
        handle.engine = engine
        handle.session = EngineSession(engine, loop)
        handle.load_seconds = time.monotonic() - start
        self._set_state(handle, ModelState.READY)
        offload = handle.gpu_reason or f"n_gpu_layers={engine.params.n_gpu_layers}"
        log.info("model %s ready in %.2fs (%s; chat template: %s)", cfg.name,
                 handle.load_seconds, offload, handle.chat_template_source)
        return handle

    def _in_models_dir(self, path: str) -> bool:
        root = self.config.server.models_dir
        return bool(root and path) and Path(path).parent == Path(root).resolve()

    def _open_engine(self, handle: ModelHandle) -> NativeEngine:
        """Opens the model's bytes (and its draft's) once, checked
        (opener.py); proves bytes this process has not loaded before in a
        probe process (probe.py); then loads the engine from the same
        descriptors, so what was checked is what is loaded."""
        cfg = handle.config
        source: Source = StoredSource(cfg.name) if cfg.store else FileSource(cfg.path)
        model = open_source(source, "model", cfg.name, self.store,
                            no_symlink=self._in_models_dir(cfg.path))
        draft: OpenedSource | None = None
        try:
            handle.source = model.description
            if cfg.draft is not None:
                draft = open_source(cfg.draft, "model", f"{cfg.name}: draft", self.store)
            probe(cfg.name, model.fd, draft.fd if draft is not None else -1)
            params, handle.gpu_reason = engine_params(cfg, model.info)
            drift = self.config.drift
            engine = NativeEngine(replace(params, model_path=None, model_fd=model.fd,
                                          draft_fd=draft.fd if draft is not None else -1,
                                          drift_rows=drift.nll_rows if drift.enabled else 0))
        except errors.InvalidArgument as exc:  # e.g. a draft with another vocabulary
            raise errors.ModelLoadError(f"{cfg.name}: {exc}") from None
        finally:
            model.close()
            if draft is not None:
                draft.close()
        handle.chat_template, handle.chat_template_source = chat_template_for(cfg, engine)
        try:
            handle.adapters = {name: self._load_adapter(engine, cfg.name, name, source)
                               for name, source in cfg.adapters}
        except BaseException:
            engine.close()
            raise
        return engine

    def _load_adapter(self, engine: NativeEngine, model: str, name: str, source: Source) -> int:
        """Loads an adapter (opened and checked by opener.py) into the engine."""
        adapter = open_source(source, "adapter", f"{model}: adapter {name}", self.store)
        try:
            return engine.load_adapter(fd=adapter.fd)
        finally:
            adapter.close()

    async def set_adapter(self, model: str, name: str, source: Source, version: int = 0
                          ) -> ModelHandle:
        """Loads `source` as adapter `name` of a ready model, replacing any
        adapter of that name: requests already running finish with the old
        one, new ones get the new one (hot swap).  `version`: the federation
        release it is, for Models.Get (0: none)."""
        check_name(name, "adapter")
        handle = self.ready(model)
        assert handle.engine is not None
        engine = handle.engine
        new_id = await asyncio.get_running_loop().run_in_executor(
            None, self._load_adapter, engine, handle.name, name, source)
        old_id = handle.adapters.get(name)
        handle.adapters = {**handle.adapters, name: new_id}
        handle.adapter_versions = {**{k: v for k, v in handle.adapter_versions.items()
                                      if k != name}, **({name: version} if version else {})}
        if old_id:      # waits for the step in progress: not on the event loop
            await asyncio.get_running_loop().run_in_executor(None, engine.unload_adapter,
                                                             old_id)
        log.info("%s: adapter %s loaded from %s%s", handle.name, name, source,
                 " (replacing the previous version)" if old_id else "")
        return handle

    def remove_adapter(self, model: str, name: str) -> ModelHandle:
        handle = self.ready(model)
        assert handle.engine is not None
        old_id = handle.adapters.get(name)
        if not old_id:
            raise errors.NotFound(f"adapter: model {handle.name!r} has no adapter {name!r}")
        handle.adapters = {k: v for k, v in handle.adapters.items() if k != name}
        handle.adapter_versions = {k: v for k, v in handle.adapter_versions.items() if k != name}
        handle.engine.unload_adapter(old_id)
        return handle

    async def load_by_name(self, name: str, n_ctx: int | None = None,
                           n_parallel: int | None = None) -> ModelHandle:
        if n_ctx is not None and not 16 <= n_ctx <= 1 << 24:
            raise errors.InvalidArgument(f"n_ctx: must be in 16..{1 << 24}, got {n_ctx}")
        if n_parallel is not None and not 1 <= n_parallel <= 256:
            raise errors.InvalidArgument(f"n_parallel: must be in 1..256, got {n_parallel}")
        cfg = self.resolve(name)
        if n_ctx is not None:
            cfg = replace(cfg, n_ctx=n_ctx)
        if n_parallel is not None:
            cfg = replace(cfg, n_parallel=n_parallel)
        return await self.load(cfg)

    async def unload(self, name: str, drain_timeout: float) -> ModelHandle:
        if not 0 <= drain_timeout <= 24 * 3600:
            raise errors.InvalidArgument(
                f"drain_timeout_seconds: must be in 0..86400, got {drain_timeout}")
        handle = self.get(name)
        if handle.state is ModelState.DRAINING:
            raise errors.FailedPrecondition(f"model {name!r} is already being unloaded")
        if handle.state is ModelState.LOADING:
            raise errors.Unavailable(f"model {name!r} is still loading; unload it afterwards")
        self._set_state(handle, ModelState.DRAINING)
        await self._drain(handle, drain_timeout)
        self._models.pop(name, None)
        self._set_state(handle, ModelState.UNLOADED)
        return handle

    async def _drain(self, handle: ModelHandle, timeout: float) -> None:
        engine, session = handle.engine, handle.session
        if engine is None or session is None:
            return
        engine.close_admission()
        if not await session.wait_idle(timeout):
            log.warning("model %s: cancelling %d streams still running after %.1fs",
                        handle.name, session.active, timeout)
            session.cancel_all()
            await session.wait_idle(5.0)
        await asyncio.get_running_loop().run_in_executor(None, engine.close)
        session.close()
        handle.engine = handle.session = None

    def close_admission(self) -> None:
        for handle in self._models.values():
            if handle.engine is not None and handle.state is ModelState.READY:
                handle.engine.close_admission()
                self._set_state(handle, ModelState.DRAINING)

    async def shutdown(self, grace: float) -> None:
        """Drains every model within `grace` seconds, then frees them."""
        self.close_admission()
        await asyncio.gather(*(self._drain(h, grace) for h in list(self._models.values())))
        for handle in list(self._models.values()):
            self._set_state(handle, ModelState.UNLOADED)
        self._models.clear()
