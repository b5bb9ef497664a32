"""Draft models for the speculative-decoding benchmark, made offline.

No smaller Gemma 3 than 270M exists to pair with it, so the benchmark makes
an early-exit draft instead: the model's own first layers, its final norm
and its output head (self-speculation in the LayerSkip manner).  It shares
the tokenizer by construction.
"""
from __future__ import annotations

import re
from pathlib import Path


def early_exit_draft(src: Path, dst: Path, n_layers: int) -> Path:
    """Writes a copy of `src` with only blocks 0..n_layers-1."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch = str(reader.fields["general.architecture"].contents())
    writer = gguf.GGUFWriter(str(dst), arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = field.contents()
        if field.name == f"{arch}.block_count":
            value = n_layers
        elif field.name == "general.name":
            value = f"{value} (first {n_layers} layers)"
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, vtype, sub_type=sub)
    block = re.compile(r"^blk\.(\d+)\.")
    kept = [t for t in reader.tensors
            if not (m := block.match(t.name)) or int(m.group(1)) < n_layers]
    for t in kept:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in kept:
        writer.write_tensor_data(t.data)
    writer.close()
    return dst
