"""Binding of libhearth_core, the native engine.

`ffi`/`lib` come from native/include/hearth_core.h, which is both the C API
and the cdef; `check()` is the only place a C status becomes an exception.
`NativeEngine` and `NativeRequest` wrap the handles with typed results;
`runtime.native.rpc` probes and runs ggml RPC workers.
"""
from runtime.native._ffi import check, ffi, lib, library_path
from runtime.native.engine import NativeEngine, NativeRequest
from runtime.native.textstream import TextStream
from runtime.native.types import (
    DeviceInfo,
    DriftSignals,
    EngineParams,
    EngineStats,
    FinishReason,
    ModelInfo,
    Output,
    RequestParams,
    Sampling,
    ScoreParams,
    ScoreResult,
    StepRecord,
    TokenLogprobs,
    build_info,
    list_devices,
)

__all__ = [
    "DeviceInfo",
    "DriftSignals",
    "EngineParams",
    "EngineStats",
    "FinishReason",
    "ModelInfo",
    "NativeEngine",
    "NativeRequest",
    "Output",
    "RequestParams",
    "Sampling",
    "ScoreParams",
    "ScoreResult",
    "StepRecord",
    "TextStream",
    "TokenLogprobs",
    "build_info",
    "check",
    "ffi",
    "lib",
    "library_path",
    "list_devices",
]
