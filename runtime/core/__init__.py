"""Transport-neutral services.

InferenceService validates requests, resolves the model, tokenizes, runs the
engine and turns its output into typed chunks; it knows nothing of gRPC.
The gRPC servicers (and any later transport, such as an HTTP gateway) are
thin adapters over it, so every transport shares one code path.

options.py is the one table of generation options (name, type, range,
budget, server default, OpenAI and KServe spellings); validation.py checks
requests against it, and the transports' converters read requests by it.
"""
from runtime.core.inference import InferenceService
from runtime.core.types import (
    CallContext,
    ChatMessage,
    ChatRequest,
    EmbedRequest,
    GenerateChunk,
    GenerateRequest,
    GenerationOptions,
    StructuredOutput,
    TokenLogprob,
    TopLogprob,
    Usage,
)

__all__ = [
    "CallContext",
    "ChatMessage",
    "ChatRequest",
    "EmbedRequest",
    "GenerateChunk",
    "GenerateRequest",
    "GenerationOptions",
    "InferenceService",
    "StructuredOutput",
    "TokenLogprob",
    "TopLogprob",
    "Usage",
]
