"""Sampling settings of a KServe request, to core GenerationOptions.

They come from two places, as with Triton's LLM backends: the optional
`sampling_parameters` input, a JSON object, and the request's `parameters`
map.  A key may be set in one of them, not in both.  Unknown keys are
refused by name, because a misspelt key that is silently ignored gives a
different generation than the caller asked for.

Numbers and booleans may also be written as strings ("0.7", "true"): the
vLLM backend's own examples send them that way.  The keys, their types and
their vLLM forms come from the option table (core/options.py); ranges are
checked by the core, which names the Hearth field (the table's name, where a
KServe key spells it differently).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from runtime._proto.kserve.v2 import inference_pb2 as kpb
from runtime.core import GenerationOptions
from runtime.core.options import OPTIONS, Kind, Option
from runtime.core.types import StructuredOutput
from runtime.errors import InvalidArgument


def _show(value: Any) -> str:
    """A value for an error message: scalars shown cut short, containers
    only named (their repr could be huge, or nested past the stack)."""
    if isinstance(value, str | int | float | bool) or value is None:
        text = repr(value)
        return text if len(text) <= 80 else text[:80] + "..."
    return "an object" if isinstance(value, dict) else f"a {type(value).__name__}"


def _float(where: str, value: Any) -> float:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:           # an integer too large for a float
            raise InvalidArgument(f"{where}: must be a finite number") from None
    raise InvalidArgument(f"{where}: must be a number, got {_show(value)}")


def _int(where: str, value: Any) -> int:
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool):
        return value
    raise InvalidArgument(f"{where}: must be an integer, got {_show(value)}")


def _bool(where: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidArgument(f"{where}: must be true or false, got {_show(value)}")


def _text(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{where}: must be a string, got {_show(value)}")
    return value


def _stops(where: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise InvalidArgument(f"{where}[{i}]: must be a string, got {_show(item)}")
        return tuple(value)
    raise InvalidArgument(f"{where}: must be a string or a list of strings, got {_show(value)}")


_CONVERT: dict[Kind, Callable[[str, Any], Any]] = {
    Kind.INT: _int, Kind.FLOAT: _float, Kind.BOOL: _bool, Kind.TEXT: _text,
    Kind.TEXT_LIST: _stops,
}
# Handled below: they set more than one field, or depend on each other.
_SPECIAL = ("logprobs", "response_format", "grammar")
# key -> its row of the table
_SIMPLE: dict[str, Option] = {o.kserve: o for o in OPTIONS
                              if o.kserve is not None and o.kserve not in _SPECIAL}
KNOWN_KEYS = tuple(sorted((*_SIMPLE, *_SPECIAL)))


def _json_object(where: str, value: Any) -> dict[str, Any]:
    """An object, or a string holding one (the parameters map has no
    objects)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise InvalidArgument(f"{where}: not valid JSON: {exc}") from None
        except RecursionError:
            raise InvalidArgument(f"{where}: nested too deeply") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: must be a JSON object, got {_show(value)}")
    return value


def _response_format(where: str, value: Any) -> StructuredOutput | None:
    fmt = _json_object(where, value)
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutput("json_object")
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidArgument(f"{where}.json_schema.schema: must be a JSON object")
        try:
            return StructuredOutput("json_schema", json.dumps(schema))
        except RecursionError:
            raise InvalidArgument(f"{where}.json_schema.schema: nested too deeply") from None
    raise InvalidArgument(f"{where}.type: must be text, json_object or json_schema, "
                          f"got {_show(kind)}")


def parse_sampling_json(raw: bytes) -> dict[str, Any]:
    """The `sampling_parameters` input's element: a JSON object."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument("sampling_parameters: not valid UTF-8") from None
    return _json_object("sampling_parameters", text)


def parameter_value(param: kpb.InferParameter) -> Any:
    """The value an InferParameter holds, whichever kind it is."""
    kind = param.WhichOneof("parameter_choice")
    return getattr(param, kind) if kind else None


def generation_options(from_json: dict[str, Any], from_parameters: dict[str, Any]
                       ) -> GenerationOptions:
    """Both sources merged and converted; every error names its source and key."""
    values: dict[str, tuple[str, Any]] = {}     # key -> (where, value)
    for source, given in (("sampling_parameters", from_json),
                          ("parameters", from_parameters)):
        for key, value in given.items():
            # A key is echoed in errors (and their logs) only when it is plain.
            where = (f"{source}.{key}" if key.isascii() and key.isidentifier()
                     else f"{source}[{key!r:.80}]")
            if key not in _SIMPLE and key not in _SPECIAL:
                raise InvalidArgument(f"{where}: unknown sampling parameter (known: "
                                      f"{', '.join(KNOWN_KEYS)})")
            if key in values:
                raise InvalidArgument(f"{where}: also set in {values[key][0]}; set it once")
            values[key] = (where, value)

    fields: dict[str, Any] = {}
    for key, (where, value) in values.items():
        if key in _SIMPLE:
            row = _SIMPLE[key]
            value = _CONVERT[row.kind](where, value)
            # vLLM's spellings of our values (its "no top-k" is -1, ours 0)
            fields[row.name] = dict(row.kserve_aliases).get(value, value)
    if "logprobs" in values:
        where, value = values["logprobs"]
        if isinstance(value, bool | str):
            fields["logprobs"] = _bool(where, value)
        else:
            # vLLM's form: logprobs=N asks for the N most likely alternatives.
            if "top_logprobs" in values:
                raise InvalidArgument(f"{where}: an integer here means top_logprobs; "
                                      "do not set both")
            fields["logprobs"] = True
            fields["top_logprobs"] = _int(where, value)
    if "response_format" in values and "grammar" in values:
        raise InvalidArgument(f"{values['grammar'][0]}: set either grammar or "
                              "response_format, not both")
    if "response_format" in values:
        fields["structured"] = _response_format(*values["response_format"])
    if "grammar" in values:
        where, value = values["grammar"]
        if not isinstance(value, str) or not value.strip():
            raise InvalidArgument(f"{where}: must be a non-empty GBNF grammar string")
        fields["structured"] = StructuredOutput("grammar", value)
    return GenerationOptions(**fields)
