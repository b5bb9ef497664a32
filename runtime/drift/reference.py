"""A model version's reference: what its traffic looked like at first.

In memory it is the first K observations (scalars as columns, vectors as
rows).  On disk it is aggregate only (`ReferenceAggregate`): per scalar signal
its quantiles, per vector signal its mean and covariance.  A reference rebuilt
from an aggregate uses the quantiles as a pseudo-sample and draws vectors from
the stored Gaussian; their joint dependence is lost, which makes the
calibrated threshold conservative (independent signals alarm more often at a
given threshold, so calibration picks a stricter one).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.drift.signals import Observation

QUANTILES = 256


@dataclass(frozen=True)
class ReferenceAggregate:
    """What may be persisted: no per-request value survives in it."""

    size: int
    quantiles: dict[str, list[float]]
    vector_mean: list[float] | None
    vector_cov: list[list[float]] | None
    joint: bool = False      # True only for a reference still held in memory

    def to_json(self) -> dict:
        return {"size": self.size, "quantiles": self.quantiles,
                "vector_mean": self.vector_mean, "vector_cov": self.vector_cov}

    @classmethod
    def from_json(cls, doc: dict) -> ReferenceAggregate:
        return cls(int(doc["size"]), {k: [float(v) for v in vs]
                                      for k, vs in doc["quantiles"].items()},
                   doc.get("vector_mean"), doc.get("vector_cov"))


@dataclass
class ReferenceData:
    """Columns of the reference: scalars (K,) per signal, vectors (K, d)."""

    scalars: dict[str, np.ndarray]
    vectors: np.ndarray | None
    joint: bool          # rows belong together (real observations), or marginals only

    @property
    def size(self) -> int:
        if self.scalars:
            return next(iter(self.scalars.values())).size
        return 0 if self.vectors is None else self.vectors.shape[0]

    @classmethod
    def of(cls, observations: list[Observation], scalar_names: list[str],
           use_vector: bool) -> ReferenceData:
        scalars = {name: np.array([o.scalars[name] for o in observations], dtype=np.float64)
                   for name in scalar_names}
        vectors = (np.stack([np.asarray(o.vector, dtype=np.float64) for o in observations])
                   if use_vector and observations else None)
        return cls(scalars, vectors, joint=True)

    def aggregate(self) -> ReferenceAggregate:
        q = (np.arange(min(QUANTILES, self.size)) + 0.5) / min(QUANTILES, self.size)
        quantiles = {name: [float(x) for x in np.quantile(col, q, method="inverted_cdf")]
                     for name, col in self.scalars.items()}
        if self.vectors is None:
            return ReferenceAggregate(self.size, quantiles, None, None)
        cov = np.cov(self.vectors, rowvar=False).reshape(self.vectors.shape[1], -1)
        return ReferenceAggregate(self.size, quantiles,
                                  [float(x) for x in self.vectors.mean(axis=0)],
                                  [[float(x) for x in row] for row in cov])

    @classmethod
    def from_aggregate(cls, agg: ReferenceAggregate, seed: int) -> ReferenceData:
        scalars = {name: np.asarray(vs, dtype=np.float64) for name, vs in agg.quantiles.items()}
        vectors = None
        if agg.vector_mean is not None and agg.vector_cov is not None:
            rng = np.random.default_rng(seed)
            vectors = rng.multivariate_normal(np.asarray(agg.vector_mean),
                                              np.asarray(agg.vector_cov),
                                              size=max(agg.size, 2), method="eigh")
        return cls(scalars, vectors, joint=False)

    def resample(self, n: int, rng: np.random.Generator) -> ReferenceData:
        """n rows drawn with replacement: jointly when rows belong together,
        else each column on its own."""
        k = self.size
        shared = rng.integers(0, k, n) if self.joint else None
        scalars = {name: col[shared if shared is not None else rng.integers(0, col.size, n)]
                   for name, col in self.scalars.items()}
        vectors = None
        if self.vectors is not None:
            rows = shared if shared is not None else rng.integers(0, self.vectors.shape[0], n)
            vectors = self.vectors[rows]
        return ReferenceData(scalars, vectors, joint=self.joint)
