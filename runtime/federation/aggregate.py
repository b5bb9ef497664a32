"""FedAvg: the coordinator's combination of site updates.

Updates are flat float vectors (the trainable adapter tensors, concatenated
in a fixed order).  Each is checked before it counts: the expected length,
finite values, an L2 norm within the round's clipping bound (a site that
skipped clipping would otherwise dominate, and DP would not hold), and a
positive token count.  The average is weighted by training tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from runtime.errors import FailedPrecondition, InvalidArgument

# Float rounding of a clipped update's norm.
NORM_SLACK = 1e-4


@dataclass(frozen=True)
class SiteUpdate:
    site: str
    delta: np.ndarray      # float32, the change to the global adapter
    tokens: int            # training tokens behind it (the FedAvg weight)


@dataclass(frozen=True)
class Rejection:
    site: str
    reason: str


def check_update(u: SiteUpdate, size: int, clip_norm: float) -> str | None:
    """Why the update cannot count, or None."""
    if u.delta.ndim != 1 or u.delta.size != size:
        return f"wrong shape {tuple(u.delta.shape)}, expected ({size},)"
    if not np.all(np.isfinite(u.delta)):
        return "contains NaN or infinity"
    norm = float(np.linalg.norm(u.delta.astype(np.float64)))
    if clip_norm > 0 and norm > clip_norm * (1 + NORM_SLACK):
        return f"L2 norm {norm:.4g} exceeds the clipping bound {clip_norm:g}"
    if u.tokens <= 0:
        return f"token count must be positive, got {u.tokens}"
    return None


def fedavg(updates: list[SiteUpdate], size: int, clip_norm: float, min_sites: int = 1
           ) -> tuple[np.ndarray, list[Rejection]]:
    """The token-weighted mean of the acceptable updates, and the rejected."""
    if size <= 0:
        raise InvalidArgument(f"size: must be positive, got {size}")
    accepted: list[SiteUpdate] = []
    rejected: list[Rejection] = []
    seen: set[str] = set()
    for u in updates:
        reason = "sent more than one update" if u.site in seen else check_update(
            u, size, clip_norm)
        seen.add(u.site)
        if reason is None:
            accepted.append(u)
        else:
            rejected.append(Rejection(u.site, reason))
    if len(accepted) < min_sites:
        raise FailedPrecondition(f"aggregation: {len(accepted)} acceptable updates, the round "
                                 f"needs {min_sites}")
    total_tokens = math.fsum(u.tokens for u in accepted)
    mean = np.zeros(size, dtype=np.float64)
    for u in accepted:
        mean += u.delta.astype(np.float64) * (u.tokens / total_tokens)
    return mean.astype(np.float32), rejected
