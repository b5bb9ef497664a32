"""LoRA adapters as flat vectors and as llama.cpp LoRA GGUF files.

Federated averaging works on one flat float32 vector per site, the
"trainable" vector; the engine loads llama.cpp LoRA GGUF files.  This module
converts between the two with numpy only, so the coordinator can build the
global adapter without torch.

Each targeted weight W (out x in, as stored in the GGUF) gets y = W x +
(alpha / rank) * B (A x), with A rank x in and B out x rank, which is how
llama.cpp applies a LoRA (src/llama-graph.cpp, build_lora_mm).  The vector
holds, site by site in `LoraLayout.sites` order (block by block, the targets
in `LoraSpec.targets` order):

* scheme "ffa" (FFA-LoRA, Sun et al., ICLR 2024): B only.  A stays at
  `initial_a`, drawn from the seed, so it is the same at every site and the
  average of the sites' B matrices is exactly the average of their updates
  B A; plain LoRA averages A and B separately, and the mean of products is
  not the product of means.
* scheme "fedavg": A then B for each site, both trained.

Matrices are flattened row-major in their numpy shapes.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import HearthError, InvalidArgument
from runtime.federation.train.hparams import hparams_from_info
from runtime.models.gguf_file import GGUFInfo, inspect_gguf, parse_gguf_header

TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
SCHEMES = ("ffa", "fedavg")


@dataclass(frozen=True)
class LoraSpec:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = TARGETS
    scheme: str = "ffa"    # "ffa": train B only, A frozen and shared; "fedavg": train A and B
    seed: int = 0          # seeds the shared A matrices (B starts at zero)

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise InvalidArgument(f"LoRA rank must be a positive integer, not {self.rank!r}")
        if not (isinstance(self.alpha, int | float) and math.isfinite(self.alpha)
                and self.alpha > 0):
            # llama.cpp reads alpha 0 as "no alpha/rank scaling": refused
            # rather than given a second meaning.
            raise InvalidArgument(f"LoRA alpha must be a positive number, not {self.alpha!r}")
        unknown = [t for t in self.targets if t not in TARGETS]
        if not self.targets or unknown or len(set(self.targets)) != len(self.targets):
            raise InvalidArgument(f"LoRA targets {self.targets!r} must be distinct names "
                                  f"from {', '.join(TARGETS)}")
        if self.scheme not in SCHEMES:
            raise InvalidArgument(f"LoRA scheme {self.scheme!r} is not one of {SCHEMES}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InvalidArgument(f"LoRA seed must be a non-negative integer, not {self.seed!r}")

    @property
    def scale(self) -> float:
        """What llama.cpp multiplies B A x by (at adapter_scale 1)."""
        return self.alpha / self.rank


@dataclass(frozen=True)
class LoraSite:
    """One adapted weight: `tensor` is its name in the base model."""
    tensor: str
    block: int
    target: str
    in_dim: int
    out_dim: int


@dataclass(frozen=True)
class LoraLayout:
    arch: str
    targets: tuple[str, ...]
    sites: tuple[LoraSite, ...]


def lora_layout(model_path: str | Path, spec: LoraSpec) -> LoraLayout:
    """The adapted tensors of a model, from its GGUF header alone."""
    return layout_from_info(inspect_gguf(model_path), spec)


def layout_from_info(info: GGUFInfo, spec: LoraSpec) -> LoraLayout:
    hp = hparams_from_info(info)
    dims = {t.name: t.dims for t in info.tensors}
    sites = []
    for block in range(hp.n_layer):
        for target in spec.targets:
            name = f"blk.{block}.{target}.weight"
            d = dims.get(name)
            if d is None or len(d) != 2:
                raise InvalidArgument(f"the model has no 2-D tensor {name} to adapt")
            # GGUF lists dimensions innermost first: (in, out).
            sites.append(LoraSite(name, block, target, in_dim=int(d[0]), out_dim=int(d[1])))
    return LoraLayout(arch=hp.arch, targets=spec.targets, sites=tuple(sites))


def _check(layout: LoraLayout, spec: LoraSpec) -> None:
    if layout.targets != spec.targets:
        raise InvalidArgument(f"the layout adapts {layout.targets}, the spec {spec.targets}")


def initial_a(layout: LoraLayout, spec: LoraSpec) -> list[np.ndarray]:
    """The A matrices every site starts from: N(0, 1/in) entries from numpy's
    PCG64 seeded with spec.seed, so every machine draws the same ones.  The
    1/in variance keeps A x at the scale of x whatever the width."""
    _check(layout, spec)
    rng = np.random.default_rng(spec.seed)
    return [(rng.standard_normal((spec.rank, s.in_dim)) / math.sqrt(s.in_dim)).astype(np.float32)
            for s in layout.sites]


def _a_size(site: LoraSite, spec: LoraSpec) -> int:
    return spec.rank * site.in_dim


def _b_size(site: LoraSite, spec: LoraSpec) -> int:
    return site.out_dim * spec.rank


def trainable_size(layout: LoraLayout, spec: LoraSpec) -> int:
    _check(layout, spec)
    b = sum(_b_size(s, spec) for s in layout.sites)
    return b if spec.scheme == "ffa" else b + sum(_a_size(s, spec) for s in layout.sites)


def initial_trainable(layout: LoraLayout, spec: LoraSpec) -> np.ndarray:
    """The starting vector: B = 0, so the adapter starts as a no-op."""
    pairs = [(a, np.zeros((s.out_dim, spec.rank), np.float32))
             for s, a in zip(layout.sites, initial_a(layout, spec), strict=True)]
    return trainable_from_matrices(spec, pairs)


def trainable_from_matrices(spec: LoraSpec, pairs: list[tuple[np.ndarray, np.ndarray]]
                            ) -> np.ndarray:
    """Packs per-site (A, B) into the trainable vector (A dropped for ffa)."""
    parts: list[np.ndarray] = []
    for a, b in pairs:
        if spec.scheme == "fedavg":
            parts.append(np.asarray(a, np.float32).ravel())
        parts.append(np.asarray(b, np.float32).ravel())
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def checked_trainable(layout: LoraLayout, spec: LoraSpec, trainable: object) -> np.ndarray:
    """`trainable` as a flat float32 vector of the right length and finite."""
    try:
        v = np.asarray(trainable, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"trainable vector is not numeric: {exc}") from exc
    expected = trainable_size(layout, spec)
    if v.ndim != 1 or v.size != expected:
        raise InvalidArgument(f"trainable vector has shape {v.shape}, expected ({expected},)")
    if not np.isfinite(v).all():
        raise InvalidArgument("trainable vector has non-finite values")
    return v


def matrices_from_trainable(layout: LoraLayout, spec: LoraSpec, trainable: object
                            ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Unpacks the vector into per-site (A, B); for ffa A is initial_a."""
    v = checked_trainable(layout, spec, trainable)
    fixed_a = initial_a(layout, spec) if spec.scheme == "ffa" else None
    pairs, pos = [], 0
    for i, s in enumerate(layout.sites):
        if fixed_a is not None:
            a = fixed_a[i]
        else:
            a = v[pos:pos + _a_size(s, spec)].reshape(spec.rank, s.in_dim)
            pos += a.size
        b = v[pos:pos + _b_size(s, spec)].reshape(s.out_dim, spec.rank)
        pos += b.size
        pairs.append((a, b))
    return pairs


def adapter_from_trainable(layout: LoraLayout, spec: LoraSpec, trainable: object) -> bytes:
    """The llama.cpp LoRA GGUF for a trainable vector, built in memory."""
    import gguf

    pairs = matrices_from_trainable(layout, spec, trainable)
    # GGUFWriter only writes to a path; an anonymous memory file keeps the
    # adapter off the disk (Hearth encrypts everything it stores).
    fd = os.memfd_create("hearth-lora", os.MFD_CLOEXEC)
    try:
        writer = gguf.GGUFWriter(f"/proc/self/fd/{fd}", layout.arch)
        writer.add_string("general.type", "adapter")
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", float(spec.alpha))
        for site, (a, b) in zip(layout.sites, pairs, strict=True):
            writer.add_tensor(f"{site.tensor}.lora_a", np.ascontiguousarray(a, np.float32))
            writer.add_tensor(f"{site.tensor}.lora_b", np.ascontiguousarray(b, np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        size = os.fstat(fd).st_size
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def trainable_from_adapter(layout: LoraLayout, spec: LoraSpec, data: bytes) -> np.ndarray:
    """The trainable vector stored in an adapter file; InvalidArgument if the
    file is not a LoRA of exactly this layout (and, for ffa, this seed)."""
    _check(layout, spec)
    try:
        info = parse_gguf_header(data, len(data), "adapter")
    except HearthError as exc:
        raise InvalidArgument(str(exc)) from exc
    meta = info.metadata
    for key, expected in (("general.type", "adapter"), ("adapter.type", "lora"),
                          ("general.architecture", layout.arch)):
        if meta.get(key) != expected:
            raise InvalidArgument(f"adapter {key} is {meta.get(key)!r}, expected {expected!r}")
    alpha = meta.get("adapter.lora.alpha")
    if not isinstance(alpha, float) or not math.isclose(alpha, spec.alpha, rel_tol=1e-6):
        raise InvalidArgument(f"adapter alpha is {alpha!r}, expected {spec.alpha}")
    tensors = {t.name: t for t in info.tensors}
    expected_names = {f"{s.tensor}.lora_{ab}" for s in layout.sites for ab in "ab"}
    if set(tensors) != expected_names:
        extra = sorted(set(tensors) - expected_names)[:3]
        missing = sorted(expected_names - set(tensors))[:3]
        raise InvalidArgument(f"adapter tensors do not match the layout (unexpected: {extra}, "
                              f"missing: {missing})")

    def read(name: str, shape: tuple[int, int]) -> np.ndarray:
        t = tensors[name]
        if t.type_name != "F32" or t.dims != (shape[1], shape[0]):
            raise InvalidArgument(f"adapter tensor {name} is {t.type_name} {t.dims}, expected "
                                  f"F32 {(shape[1], shape[0])}")
        return np.frombuffer(data, np.float32, shape[0] * shape[1],
                             info.data_offset + t.offset).reshape(shape)

    pairs = [(read(f"{s.tensor}.lora_a", (spec.rank, s.in_dim)),
              read(f"{s.tensor}.lora_b", (s.out_dim, spec.rank))) for s in layout.sites]
    if spec.scheme == "ffa":
        for s, (a, _), a0 in zip(layout.sites, pairs, initial_a(layout, spec), strict=True):
            if not np.array_equal(a, a0):
                raise InvalidArgument(f"adapter A of {s.tensor} is not the shared A of seed "
                                      f"{spec.seed}: this adapter was not trained with this spec")
    return checked_trainable(layout, spec, trainable_from_matrices(spec, pairs))
