"""OpenAI request JSON to core request types, explicitly and strictly.

The generation options, their OpenAI spellings and types come from the
option table (core/options.py).  Every field is read with its type checked
(fields.py); ranges and budgets are the core's (validation.check_options),
run here before anything else so that a 400 names the field as the request
spelled it.  Beyond the fields listed here:
  * fields OpenAI defines that change nothing here (user, metadata, store,
    ...) are accepted and ignored;
  * fields Hearth does not implement (tools, functions, audio, logit_bias,
    n > 1, ...) are a 400 naming them, never silently dropped;
  * anything else is a 400 "unrecognized request argument", as OpenAI's
    own API answers.
Hearth extensions: the table's options that OpenAI does not define,
grammar (GBNF) on both generation endpoints, response_format on
/v1/completions too, and normalize (default true) on /v1/embeddings.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from runtime.core import (
    ChatMessage,
    ChatRequest,
    EmbedRequest,
    GenerateRequest,
    GenerationOptions,
    StructuredOutput,
)
from runtime.core.options import OPTIONS, Kind, Option
from runtime.core.validation import OptionError, check_options, check_printable
from runtime.errors import InvalidArgument
from runtime.http.errors import InvalidParam
from runtime.http.fields import (
    check_keys,
    opt_bool,
    opt_int,
    opt_number,
    opt_object,
    opt_text,
    refuse_unsupported,
    show,
    text,
)

MAX_MODEL_NAME = 64
_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Options read by their row alone; the logprobs pair and structured output
# are spelled differently per endpoint, and read below.
_PLAIN: tuple[Option, ...] = tuple(o for o in OPTIONS if o.openai is not None)
_SAMPLING = (*(o.openai for o in _PLAIN if o.openai is not None), "n", "response_format",
             "stream", "stream_options", "grammar")
_IGNORED = ("user", "metadata", "store", "service_tier", "safety_identifier",
            "prompt_cache_key", "parallel_tool_calls")
_NO_TOOLS = "tool and function calling are not implemented"
_UNSUPPORTED_CHAT = {
    "tools": _NO_TOOLS, "tool_choice": _NO_TOOLS, "functions": _NO_TOOLS,
    "function_call": _NO_TOOLS, "audio": "text only", "prediction": "no predicted outputs",
    "web_search_options": "no web search", "reasoning_effort": "no reasoning models",
    "verbosity": "not a setting of these models",
}
CHAT_FIELDS = frozenset((*_SAMPLING, *_IGNORED, *_UNSUPPORTED_CHAT, "model", "messages",
                         "max_completion_tokens", "logprobs", "top_logprobs", "logit_bias",
                         "modalities"))
COMPLETION_FIELDS = frozenset((*_SAMPLING, "user", "model", "prompt", "logprobs", "echo",
                               "suffix", "best_of", "logit_bias"))
EMBEDDING_FIELDS = frozenset(("model", "input", "encoding_format", "dimensions", "user",
                              "normalize"))
ENCODINGS = ("float", "base64")
# "developer" is OpenAI's newer name for the system role.
_ROLE_ALIASES = {"developer": "system"}
_MESSAGE_FIELDS = frozenset(("role", "content", "name", "refusal", "tool_calls",
                             "tool_call_id", "function_call", "audio"))


@dataclass(frozen=True)
class Streaming:
    stream: bool = False
    include_usage: bool = False


@dataclass(frozen=True)
class ChatCall:
    request: ChatRequest
    streaming: Streaming
    logprobs: bool                   # render logprobs in the response


@dataclass(frozen=True)
class CompletionCall:
    request: GenerateRequest
    streaming: Streaming
    logprobs: bool


@dataclass(frozen=True)
class EmbeddingCall:
    request: EmbedRequest
    encoding_format: str


def model_name(body: dict[str, Any]) -> str:
    """The Hearth model name; "" (or no field) means the only loaded model."""
    name = opt_text(body, "model") or ""
    try:
        return check_printable("model", name, MAX_MODEL_NAME)
    except InvalidArgument as exc:
        raise InvalidParam("model", str(exc).removeprefix("model: ")) from None


def _streaming(body: dict[str, Any]) -> Streaming:
    stream = bool(opt_bool(body, "stream"))
    options = opt_object(body, "stream_options")
    if options is None:
        return Streaming(stream)
    if not stream:
        raise InvalidParam("stream_options", "only allowed when stream is true")
    # include_obfuscation pads chunks against side channels on OpenAI's
    # service; nothing is obfuscated here, so it changes nothing.
    check_keys(options, ("include_usage", "include_obfuscation"), "stream_options.")
    include = opt_bool(options, "include_usage")
    return Streaming(True, bool(include))


def _texts(body: dict[str, Any], key: str) -> tuple[str, ...] | None:
    """A string or a list of strings (OpenAI's `stop`)."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return (text(value, key),)
    if not isinstance(value, list):
        raise InvalidParam(key, f"must be a string or a list of strings, got {show(value)}")
    return tuple(text(s, f"{key}[{i}]") for i, s in enumerate(value))


_READERS = {Kind.INT: opt_int, Kind.FLOAT: opt_number, Kind.BOOL: opt_bool,
            Kind.TEXT: opt_text, Kind.TEXT_LIST: _texts}


def _read(body: dict[str, Any], row: Option) -> Any:
    assert row.openai is not None
    value = _READERS[row.kind](body, row.openai)
    return row.empty if value is None else value


def _structured(body: dict[str, Any]) -> StructuredOutput | None:
    fmt = opt_object(body, "response_format")
    grammar = opt_text(body, "grammar")
    structured = None
    if fmt is not None:
        check_keys(fmt, ("type", "json_schema"), "response_format.")
        kind = fmt.get("type")
        if kind == "json_object":
            structured = StructuredOutput("json_object")
        elif kind == "json_schema":
            structured = _json_schema(fmt)
        elif kind != "text":
            raise InvalidParam("response_format.type", "must be text, json_object or "
                               f"json_schema, got {show(kind)}")
    if grammar is not None:
        if structured is not None:
            raise InvalidParam("grammar", "set either grammar or a JSON response_format, "
                               "not both")
        if not grammar.strip():
            raise InvalidParam("grammar", "must not be empty")
        structured = StructuredOutput("grammar", grammar)
    return structured


def _json_schema(fmt: dict[str, Any]) -> StructuredOutput:
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict):
        raise InvalidParam("response_format.json_schema", "must be an object with name "
                           "and schema")
    check_keys(spec, ("name", "schema", "strict", "description"),
               "response_format.json_schema.")
    name = spec.get("name")
    if not isinstance(name, str) or not _SCHEMA_NAME.fullmatch(name):
        raise InvalidParam("response_format.json_schema.name", "must be 1 to 64 letters, "
                           f"digits, '_' or '-', got {show(name)}")
    if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
        raise InvalidParam("response_format.json_schema.strict", "must be true or false")
    schema = spec.get("schema")
    if schema is None:                  # OpenAI allows a schema-less json_schema
        return StructuredOutput("json_object")
    if not isinstance(schema, dict):
        raise InvalidParam("response_format.json_schema.schema",
                           f"must be a JSON Schema object, got {show(schema)}")
    return StructuredOutput("json_schema", json.dumps(schema, ensure_ascii=False))


def _single_choice(body: dict[str, Any], key: str) -> None:
    count = opt_int(body, key)
    if count is not None and count != 1:
        raise InvalidParam(key, f"only 1 is supported, got {count}", "unsupported_value")


def _options(body: dict[str, Any], spelling: dict[str, str], **given: Any
             ) -> GenerationOptions:
    """The request's options, checked by the core.  `given`: options this
    endpoint reads its own way, by name; `spelling`: the request's field for
    an option where it is not the table's OpenAI spelling, so that an error
    names the field the request used."""
    _single_choice(body, "n")
    values = {row.name: _read(body, row) for row in _PLAIN}
    values.update(given)
    options = GenerationOptions(structured=_structured(body), **values)
    try:
        check_options(options)
    except OptionError as exc:
        field = spelling.get(exc.option) or _openai_name(exc.option)
        raise InvalidParam(field if exc.index is None else f"{field}[{exc.index}]",
                           exc.detail) from None
    return options


def _openai_name(option: str) -> str:
    return next((o.openai for o in _PLAIN if o.name == option and o.openai), option)


def _refuse_logit_bias(body: dict[str, Any]) -> None:
    bias = opt_object(body, "logit_bias")
    if bias:
        raise InvalidParam("logit_bias", "not supported by this server",
                           "unsupported_parameter")


# ---- /v1/chat/completions ----------------------------------------------------

def chat_call(body: dict[str, Any]) -> ChatCall:
    check_keys(body, CHAT_FIELDS)
    refuse_unsupported(body, _UNSUPPORTED_CHAT)
    _refuse_logit_bias(body)
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise InvalidParam("modalities", f"only [\"text\"] is supported, got {show(modalities)}",
                           "unsupported_value")
    max_tokens = opt_int(body, "max_tokens")
    max_completion = opt_int(body, "max_completion_tokens")
    if max_tokens is not None and max_completion is not None and max_tokens != max_completion:
        raise InvalidParam("max_completion_tokens", "set either max_completion_tokens or "
                           "max_tokens, not both")
    logprobs = bool(opt_bool(body, "logprobs"))
    given = {"logprobs": logprobs, "top_logprobs": opt_int(body, "top_logprobs") or 0}
    spelling = {}
    if max_completion is not None:      # OpenAI's newer name for max_tokens
        given["max_tokens"] = max_completion
        spelling["max_tokens"] = "max_completion_tokens"
    options = _options(body, spelling, **given)
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidParam("messages", f"must be a list of messages, got {show(messages)}")
    request = ChatRequest(model=model_name(body), options=options,
                          messages=tuple(_message(m, i) for i, m in enumerate(messages)))
    return ChatCall(request, _streaming(body), logprobs)


def _message(message: Any, i: int) -> ChatMessage:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise InvalidParam(where, f"must be an object with role and content, got "
                           f"{show(message)}")
    check_keys(message, _MESSAGE_FIELDS, f"{where}.")
    for key in ("tool_calls", "tool_call_id", "function_call", "audio"):
        if message.get(key) is not None:
            raise InvalidParam(f"{where}.{key}", f"not supported by this server "
                               f"({_NO_TOOLS})", "unsupported_parameter")
    role = text(message.get("role"), f"{where}.role")
    if role in ("tool", "function"):
        raise InvalidParam(f"{where}.role", f"{role!r} is not supported ({_NO_TOOLS})",
                           "unsupported_value")
    opt_text(message, "name")           # checked, then ignored: templates do not use it
    return ChatMessage(_ROLE_ALIASES.get(role, role), _content(message.get("content"), where))


def _content(content: Any, where: str) -> str:
    """A string, or a list of text parts (joined by newlines); images, audio
    and files are refused."""
    if isinstance(content, str):
        return text(content, f"{where}.content")
    if not isinstance(content, list):
        raise InvalidParam(f"{where}.content", "must be a string or a list of text parts, "
                           f"got {show(content)}")
    parts = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise InvalidParam(at, f"must be an object like {{\"type\": \"text\", \"text\": "
                               f"...}}, got {show(part)}")
        kind = part.get("type")
        if kind != "text":
            raise InvalidParam(f"{at}.type", f"{show(kind)} is not supported: this server "
                               "takes text only", "unsupported_value")
        check_keys(part, ("type", "text"), f"{at}.")
        parts.append(text(part.get("text"), f"{at}.text"))
    return "\n".join(parts)


# ---- /v1/completions ----------------------------------------------------------

def completion_call(body: dict[str, Any]) -> CompletionCall:
    check_keys(body, COMPLETION_FIELDS)
    _refuse_logit_bias(body)
    _single_choice(body, "best_of")
    if opt_bool(body, "echo"):
        raise InvalidParam("echo", "not supported by this server", "unsupported_value")
    if opt_text(body, "suffix"):
        raise InvalidParam("suffix", "not supported by this server", "unsupported_value")
    top = opt_int(body, "logprobs")     # logprobs=N: N alternatives (0 or more)
    options = _options(body, {"top_logprobs": "logprobs"}, logprobs=top is not None,
                       top_logprobs=top or 0)
    prompt, tokens = _prompt(body.get("prompt"))
    request = GenerateRequest(model=model_name(body), prompt=prompt, prompt_tokens=tokens,
                              options=options)
    return CompletionCall(request, _streaming(body), top is not None)


def _prompt(value: Any) -> tuple[str, tuple[int, ...]]:
    """A string, a list of token ids, or a batch of exactly one of those."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str | list):
        value = value[0]
    if isinstance(value, str):
        return text(value, "prompt"), ()
    if isinstance(value, list) and value and all(
            isinstance(t, int) and not isinstance(t, bool) for t in value):
        return "", tuple(value)
    if isinstance(value, list) and value and all(isinstance(p, str | list) for p in value):
        raise InvalidParam("prompt", f"one prompt per request, got {len(value)}",
                           "unsupported_value")
    raise InvalidParam("prompt", "must be a string or a list of token ids, got "
                       f"{show(value)}")


# ---- /v1/embeddings -----------------------------------------------------------

def embedding_call(body: dict[str, Any]) -> EmbeddingCall:
    check_keys(body, EMBEDDING_FIELDS)
    if body.get("dimensions") is not None:
        raise InvalidParam("dimensions", "not supported: embeddings have the model's own "
                           "size", "unsupported_parameter")
    encoding = body.get("encoding_format")
    if encoding is None:
        encoding = "float"
    if encoding not in ENCODINGS:
        raise InvalidParam("encoding_format", f"must be float or base64, got {show(encoding)}")
    value = body.get("input")
    if isinstance(value, str):
        inputs: tuple[str, ...] = (text(value, "input"),)
    elif isinstance(value, list) and all(isinstance(x, str) for x in value):
        inputs = tuple(text(x, f"input[{i}]") for i, x in enumerate(value))
    elif isinstance(value, list) and value and all(isinstance(x, int | list) for x in value):
        raise InvalidParam("input", "token arrays are not supported; send text",
                           "unsupported_value")
    else:
        raise InvalidParam("input", f"must be a string or a list of strings, got {show(value)}")
    normalize = opt_bool(body, "normalize")
    # OpenAI's embeddings have length 1, so clients may use dot products as
    # cosine similarity; normalize: false gives the raw pooled vectors.
    request = EmbedRequest(model=model_name(body), inputs=inputs,
                           normalize=True if normalize is None else normalize)
    return EmbeddingCall(request, encoding)
