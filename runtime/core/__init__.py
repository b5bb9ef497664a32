"""Transport-neutral services.

InferenceService validates requests, resolves the model, tokenizes, runs the
engine and turns its output into typed chunks; it knows nothing of gRPC.
ModelRepository (repository.py) lists, loads, unloads and sets adapters,
with the access checks; InferenceService finds its models through it.
The gRPC, KServe and HTTP faces are thin adapters over both, so every
transport shares one code path.

explain.py (Explainer) explains a completion by occlusion: the answer's
log-probability without each segment of the prompt, from one native score
request (docs/explain.md).

options.py is the one table of generation options (name, type, range,
budget, server default, OpenAI and KServe spellings); validation.py checks
requests against it, and the transports' converters read requests by it.
"""
from runtime.core.inference import InferenceService
from runtime.core.repository import ModelRepository, RepositoryIndex
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
    "ModelRepository",
    "RepositoryIndex",
    "StructuredOutput",
    "TokenLogprob",
    "TopLogprob",
    "Usage",
]
