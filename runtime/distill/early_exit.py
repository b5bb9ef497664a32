"""Early-exit drafts: a model's first K blocks, its final norm and its output
head, written as a GGUF that speculative decoding loads as a draft.

No smaller sibling exists for many served models (Gemma 3 270M has none), so
the draft is cut from the model itself (self-speculation in the LayerSkip
manner); it shares the tokenizer by construction.  `replaced` swaps in new
values for some of the kept tensors: distillation passes the kept blocks'
weights with its LoRA merged in.  Every other tensor is copied byte for byte.
numpy and the gguf package only.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.errors import InvalidArgument

if TYPE_CHECKING:   # imported on use: `hearth` starts (and serves) without them
    import gguf
    import numpy as np

# How a replaced tensor is stored.  q8_0 keeps a merged weight within about
# 0.4% of its float value at a quarter of f32's size, so the draft's layers
# stay nearly as cheap to run as the quantized original's.
MERGED_TYPES = ("q8_0", "f16", "f32")

_BLOCK = re.compile(r"^blk\.(\d+)\.")


def check_draft_layers(n_layers: int, model_layers: int) -> None:
    """A draft keeps at least one block and fewer than the model has (a
    draft as deep as the model costs as much as the model)."""
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) \
            or not 1 <= n_layers < model_layers:
        raise InvalidArgument(f"draft layers must be an integer from 1 to {model_layers - 1} "
                              f"(the model has {model_layers} blocks), not {n_layers!r}")


def _encoded(values: np.ndarray, kind: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    import gguf
    import numpy as np

    if kind == "f32":
        return np.ascontiguousarray(values, dtype=np.float32), gguf.GGMLQuantizationType.F32
    if kind == "f16":
        return np.ascontiguousarray(values, dtype=np.float16), gguf.GGMLQuantizationType.F16
    if kind == "q8_0":
        qtype = gguf.GGMLQuantizationType.Q8_0
        if values.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
            raise InvalidArgument(f"a row of {values.shape[-1]} values cannot be stored as "
                                  "q8_0 (blocks of 32): use f16")
        return gguf.quants.quantize(np.asarray(values, dtype=np.float32), qtype), qtype
    raise InvalidArgument(f"merged tensor type {kind!r} is not one of {MERGED_TYPES}")


def early_exit_draft(src: str | Path, dst: str | Path, n_layers: int,
                     replaced: Mapping[str, np.ndarray] | None = None,
                     replaced_type: str = "q8_0") -> Path:
    """Writes a copy of `src` with only blocks 0..n_layers-1; each tensor
    named in `replaced` (numpy shape out x in, GGUF order reversed) gets
    those values, stored as `replaced_type`."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch = str(reader.fields["general.architecture"].contents())
    model_layers = int(reader.fields[f"{arch}.block_count"].contents())
    if not 1 <= n_layers <= model_layers:
        raise InvalidArgument(f"draft layers must be from 1 to {model_layers}, not {n_layers}")
    replaced = dict(replaced or {})
    kept = [t for t in reader.tensors
            if not (m := _BLOCK.match(t.name)) or int(m.group(1)) < n_layers]
    unknown = sorted(set(replaced) - {t.name for t in kept})
    if unknown:
        raise InvalidArgument(f"the draft keeps no tensor {unknown[0]} to replace")
    writer = gguf.GGUFWriter(str(dst), arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = field.contents()
        if field.name == f"{arch}.block_count":
            value = n_layers
        elif field.name == "general.name":
            value = f"{value} (first {n_layers} layers{', distilled' if replaced else ''})"
        elif isinstance(value, list) and len(value) == model_layers \
                and field.name.startswith(f"{arch}."):
            value = value[:n_layers]     # a per-layer array (head counts, window pattern)
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, vtype, sub_type=sub)
    payload: list[np.ndarray] = []
    for t in kept:
        if t.name in replaced:
            expected = tuple(int(d) for d in reversed(t.shape))
            values = replaced[t.name]
            if tuple(values.shape) != expected:
                raise InvalidArgument(f"{t.name}: replacement has shape {values.shape}, "
                                      f"expected {expected}")
            data, qtype = _encoded(values, replaced_type)
        else:
            data, qtype = t.data, t.tensor_type
        writer.add_tensor_info(t.name, data.shape, data.dtype, data.nbytes, qtype)
        payload.append(data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for data in payload:
        writer.write_tensor_data(data)
    writer.close()
    return Path(dst)
