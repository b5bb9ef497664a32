"""Internal request and response types of the inference core."""
from __future__ import annotations

from dataclasses import dataclass, field

from runtime.auth.principal import ANONYMOUS, Principal

# The options are the table of core/options.py; re-exported here with the
# other request types.
from runtime.core.options import GenerationOptions as GenerationOptions
from runtime.core.options import StructuredOutput as StructuredOutput


@dataclass(frozen=True)
class CallContext:
    """Who is calling, and until when."""

    request_id: str
    client: str = "anonymous"
    deadline: float | None = None        # time.monotonic() seconds
    subject: str = ""                    # data subject, for the audit log (default: client)
    principal: Principal = ANONYMOUS     # what the caller may use


@dataclass(frozen=True)
class GenerateRequest:
    model: str = ""
    prompt: str = ""
    prompt_tokens: tuple[int, ...] = ()
    options: GenerationOptions = field(default_factory=GenerationOptions)


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class ChatRequest:
    model: str = ""
    messages: tuple[ChatMessage, ...] = ()
    options: GenerationOptions = field(default_factory=GenerationOptions)


@dataclass(frozen=True)
class EmbedRequest:
    model: str = ""
    inputs: tuple[str, ...] = ()
    normalize: bool = False


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    queue_s: float
    ttft_s: float
    total_s: float
    # The request's energy (runtime/energy/): final when the chunk is sent;
    # the source says how it was known (nvml, rapl, estimate; "" when off).
    energy_joules: float = 0.0
    energy_source: str = ""


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    token: str                           # the token's text (may be part of a character)
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its log-probability under the model's
    distribution before the sampler chain transforms it, and
    the top_logprobs most likely alternatives, most likely first."""

    token_id: int
    token: str
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class GenerateChunk:
    text: str
    token_ids: list[int]
    request_id: str = ""
    finish_reason: str = ""              # set on the last chunk
    stop_sequence: str = ""
    usage: Usage | None = None
    model: str = ""
    logprobs: tuple[TokenLogprob, ...] = ()  # one per token_ids entry, when asked
    cached: bool = False                 # served from the response cache


@dataclass(frozen=True)
class Embedding:
    values: list[float]
    prompt_tokens: int


@dataclass(frozen=True)
class EmbedResult:
    model: str
    embeddings: list[Embedding]
