"""Rendering a conversation with the model's own chat template.

llama.cpp's llama_chat_apply_template recognises the common templates (Gemma,
Llama, ChatML, Mistral, ...) from the template text in the GGUF and renders
them in C.  A template it does not recognise is rendered from its Jinja text
in a sandbox (no attribute access to Python internals, no I/O), with the
BOS token left out because the tokenizer adds it.

A model without a template (a base model such as Gemma 3 270M) is refused,
not given a guessed one: a wrong template makes a model babble while looking
as if it worked.  The operator may choose one (`--chat-template`,
`[models.NAME] chat_template`); the error says so.
"""
from __future__ import annotations

from collections.abc import Sequence

from runtime import errors
from runtime.core.types import ChatMessage
from runtime.native import NativeEngine

TEMPLATE_KEY = "tokenizer.chat_template"


def no_template_error(model: str) -> errors.FailedPrecondition:
    name = model or "NAME"
    return errors.FailedPrecondition(
        f"model {model or 'this model'!r} has no chat template (it is a base model, and Hearth "
        f"does not guess one): chat with a model that has one, configure one with "
        f"`hearth serve --chat-template TEMPLATE` or `[models.{name}] chat_template = ...` "
        f"(a llama.cpp template name such as \"chatml\", or Jinja text), or use Generate "
        f"(`hearth generate`, /v1/completions) with a raw prompt")


def render_chat(engine: NativeEngine, messages: Sequence[ChatMessage],
                template: str | None = None, model: str = "") -> str:
    """`template`: None for the model's own, else a llama.cpp template name
    or Jinja text.  `model` names the model in the error."""
    if template is None and not engine.meta(TEMPLATE_KEY):
        raise no_template_error(model)
    pairs = [(m.role, m.content) for m in messages]
    try:
        return engine.apply_chat_template(pairs, add_assistant=True, template=template)
    except errors.NotFound:
        raise no_template_error(model) from None
    except errors.InvalidArgument:
        text = template if template is not None else engine.meta(TEMPLATE_KEY)
        if not text:
            raise errors.FailedPrecondition("this model's chat template cannot be read") from None
        return _render_jinja(text, messages)


def _render_jinja(template: str, messages: Sequence[ChatMessage]) -> str:
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise errors.InvalidArgument(f"messages: the chat template rejected them: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=True, bos_token="", eos_token="")
    except TemplateError as exc:
        raise errors.FailedPrecondition(f"the model's chat template failed: {exc}") from exc
