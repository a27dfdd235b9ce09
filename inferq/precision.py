"""Quality tiers: what each precision inferq offers promises about its results against the same model at fp32.

A tier is a promise measured against fp32 on the same inputs, so that "faster" is only ever compared at equal
quality (the benchmark's peer table, `bench.peers`, checks each row's tier on the real all-MiniLM-L6-v2):

* ``exact``: every vector's cosine to the fp32 vector ≥ 0.99999 (rounding only); what ``fp32`` means on any
  backend.
* ``near``: every vector's cosine ≥ 0.999; half precision (``bf16``, ``fp16``).
* ``reduced``: the lowest cosine ≥ 0.98 and the mean ≥ 0.995 for vectors; for classifiers the top label equal on
  ≥ 99.5% of items; ``int8``.

For a classifier the exact and near tiers also ask for the top label on every item (a tie broken the other way by
rounding is the only change they allow). Pure arithmetic on numpy arrays: no torch, importable on the producer
side."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np


class Tier(StrEnum):
    """How close a precision's results stay to fp32's, best first."""

    #: Rounding only: cosine ≥ 0.99999 on every vector.
    EXACT = "exact"
    #: Half precision: cosine ≥ 0.999 on every vector.
    NEAR = "near"
    #: Quantized: cosine ≥ 0.98 at worst and ≥ 0.995 on average; a classifier's top label kept on ≥ 99.5% of items.
    REDUCED = "reduced"


@dataclass(frozen=True)
class TierBounds:
    """The least a tier accepts."""

    #: The lowest cosine of any vector to its fp32 vector.
    cosine_min: float
    #: The mean cosine over the vectors.
    cosine_mean: float
    #: The share of items whose top label is fp32's.
    label_agreement: float


#: Each tier's bounds. Exact: float32 rounding across backends (kernels sum in another order) stays above 0.99999;
#: near: bf16's 8-bit mantissa measured 0.99987 at worst on all-MiniLM-L6-v2 (issue 24); reduced: what an int8
#: model must keep to be usable for search (CTranslate2's int8 measured 0.983 / 0.997, torch's dynamic int8 0.836
#: at worst, which misses it).
BOUNDS: dict[Tier, TierBounds] = {
    Tier.EXACT: TierBounds(cosine_min=0.99999, cosine_mean=0.99999, label_agreement=1.0),
    Tier.NEAR: TierBounds(cosine_min=0.999, cosine_mean=0.999, label_agreement=1.0),
    Tier.REDUCED: TierBounds(cosine_min=0.98, cosine_mean=0.995, label_agreement=0.995),
}

#: The tier each precision promises.
PRECISION_TIER: dict[str, Tier] = {
    "fp32": Tier.EXACT,
    "bf16": Tier.NEAR,
    "fp16": Tier.NEAR,
    "int8": Tier.REDUCED,
}


def tier_of(precision: str) -> Tier:
    """The tier ``precision`` promises (``auto`` has none of its own: it resolves to one of the others)."""
    try:
        return PRECISION_TIER[precision]
    except KeyError:
        raise ValueError(f"precision {precision!r} promises no tier (known: {', '.join(PRECISION_TIER)})") from None


@dataclass(frozen=True)
class Quality:
    """Results measured against fp32's on the same items: for vectors the cosines' min and mean, for labels the
    share of items whose top label is the same."""

    items: int
    cosine_min: float | None = None
    cosine_mean: float | None = None
    label_agreement: float | None = None

    def meets(self, tier: Tier) -> bool:
        """Whether these results keep ``tier``'s promise (no items: nothing to break it)."""
        if self.items == 0:
            return True
        bounds = BOUNDS[tier]
        vectors_ok = (
            self.cosine_min is None
            or self.cosine_mean is None
            or (self.cosine_min >= bounds.cosine_min and self.cosine_mean >= bounds.cosine_mean)
        )
        labels_ok = self.label_agreement is None or self.label_agreement >= bounds.label_agreement
        return vectors_ok and labels_ok

    def best_tier(self) -> Tier | None:
        """The best tier these results keep, or ``None`` below every tier."""
        return next((t for t in Tier if self.meets(t)), None)

    def describe(self) -> str:
        """``cosine min 0.99987 / mean 0.99995``, ``top label 99.6%`` or both."""
        parts = []
        if self.cosine_min is not None and self.cosine_mean is not None:
            parts.append(f"cosine min {self.cosine_min:.5f} / mean {self.cosine_mean:.5f}")
        if self.label_agreement is not None:
            parts.append(f"top label {100 * self.label_agreement:.1f}%")
        return ", ".join(parts) or "no items"


def cosines(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two ``[n, d]`` arrays (a zero row against a zero row counts as equal)."""
    a = np.asarray(got, dtype=np.float64)
    b = np.asarray(want, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} against {b.shape}")
    width = int(np.prod(a.shape[1:])) if a.ndim > 1 else 1
    a, b = a.reshape(len(a), width), b.reshape(len(b), width)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = (a * b).sum(axis=1)
    both_zero = (na == 0) & (nb == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(both_zero, 1.0, dot / np.maximum(na * nb, np.finfo(np.float64).tiny))
    return np.clip(out, -1.0, 1.0)


def vector_quality(got: np.ndarray, want: np.ndarray) -> Quality:
    """Vectors (``[n, d]``) against fp32's."""
    c = cosines(got, want)
    if len(c) == 0:
        return Quality(items=0)
    return Quality(items=len(c), cosine_min=float(c.min()), cosine_mean=float(c.mean()))


def label_quality(got: Sequence[object], want: Sequence[object]) -> Quality:
    """Top labels against fp32's, item by item."""
    if len(got) != len(want):
        raise ValueError(f"{len(got)} labels against {len(want)}")
    if not want:
        return Quality(items=0)
    same = sum(1 for g, w in zip(got, want, strict=True) if g == w)
    return Quality(items=len(want), label_agreement=same / len(want))


def choose(candidates: Sequence[str], measure: dict[str, Quality]) -> tuple[str, list[str]]:
    """The first of ``candidates`` (best speed first, ``fp32`` last) whose measured quality keeps its tier, and a
    reason for each candidate passed over. A candidate with no measurement is taken on its promise; ``fp32`` is
    always acceptable (it is the reference)."""
    reasons: list[str] = []
    for precision in candidates:
        quality = measure.get(precision)
        if precision == "fp32" or quality is None or quality.meets(tier_of(precision)):
            return precision, reasons
        reasons.append(f"{precision} misses its {tier_of(precision).value} tier ({quality.describe()})")
    return "fp32", reasons
