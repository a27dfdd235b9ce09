"""The quality tiers' arithmetic (`inferq.precision`): cosines, the bounds of each tier, and the choice that passes
over a precision missing its tier."""

from __future__ import annotations

import numpy as np
import pytest

from inferq.precision import (
    BOUNDS,
    PRECISION_TIER,
    Quality,
    Tier,
    choose,
    cosines,
    label_quality,
    tier_of,
    vector_quality,
)


def rotated(vectors: np.ndarray, cosine: float) -> np.ndarray:
    """Each row turned in its plane with the next axis so that its cosine to the original is ``cosine``."""
    out = vectors.copy()
    theta = np.arccos(cosine)
    out[:, 0], out[:, 1] = (
        np.cos(theta) * vectors[:, 0] - np.sin(theta) * vectors[:, 1],
        np.sin(theta) * vectors[:, 0] + np.cos(theta) * vectors[:, 1],
    )
    return out


def unit_rows(n: int) -> np.ndarray:
    v = np.zeros((n, 8))
    v[:, 0] = 1.0
    return v


def test_every_precision_states_its_tier() -> None:
    assert tier_of("fp32") is Tier.EXACT
    assert tier_of("bf16") is Tier.NEAR and tier_of("fp16") is Tier.NEAR
    assert tier_of("int8") is Tier.REDUCED
    assert set(PRECISION_TIER) == {"fp32", "bf16", "fp16", "int8"}
    with pytest.raises(ValueError, match="auto"):
        tier_of("auto")


def test_cosines_are_row_wise_and_scale_free() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 16))
    assert np.allclose(cosines(a, 3 * a), 1.0)
    assert np.allclose(cosines(a, -a), -1.0)
    assert np.allclose(cosines(rotated(unit_rows(3), 0.5), unit_rows(3)), 0.5)
    # Zero against zero is equal; zero against a vector is not.
    assert cosines(np.zeros((1, 4)), np.zeros((1, 4)))[0] == 1.0
    assert cosines(np.zeros((1, 4)), np.ones((1, 4)))[0] == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        cosines(np.ones((2, 3)), np.ones((2, 4)))


@pytest.mark.parametrize(
    ("cosine", "best"),
    [(1.0, Tier.EXACT), (0.999995, Tier.EXACT), (0.99998, Tier.NEAR), (0.9991, Tier.NEAR), (0.9985, Tier.REDUCED)],
)
def test_a_uniform_rounding_lands_in_its_tier(cosine: float, best: Tier) -> None:
    quality = vector_quality(rotated(unit_rows(10), cosine), unit_rows(10))
    assert quality.best_tier() is best


def test_reduced_needs_both_its_min_and_its_mean() -> None:
    # One item at 0.97 sinks it even with a high mean; items all at 0.99 keep the min but miss the mean.
    many = unit_rows(100)
    one_bad = np.concatenate([rotated(many[:1], 0.97), many[1:]])
    q = vector_quality(one_bad, many)
    assert q.cosine_mean is not None and q.cosine_mean > BOUNDS[Tier.REDUCED].cosine_mean
    assert not q.meets(Tier.REDUCED) and q.best_tier() is None
    all_low = vector_quality(rotated(many, 0.99), many)
    assert not all_low.meets(Tier.REDUCED)
    # torch's dynamic int8 on all-MiniLM-L6-v2 (issue 24): 0.836 at worst, CTranslate2's int8 0.983 / 0.997.
    assert not Quality(items=2000, cosine_min=0.836, cosine_mean=0.955).meets(Tier.REDUCED)
    assert Quality(items=2000, cosine_min=0.983, cosine_mean=0.997).meets(Tier.REDUCED)


def test_labels_reduced_at_995_per_mille_exact_and_near_at_every_item() -> None:
    want = ["a"] * 1000
    assert label_quality(["b"] * 5 + ["a"] * 995, want).meets(Tier.REDUCED)
    six = label_quality(["b"] * 6 + ["a"] * 994, want)
    assert not six.meets(Tier.REDUCED)
    one = label_quality(["b"] + ["a"] * 999, want)
    assert one.meets(Tier.REDUCED) and not one.meets(Tier.NEAR) and not one.meets(Tier.EXACT)
    assert label_quality(want, want).best_tier() is Tier.EXACT
    with pytest.raises(ValueError):
        label_quality(["a"], want)


def test_no_items_break_no_tier() -> None:
    assert vector_quality(np.zeros((0, 4)), np.zeros((0, 4))).meets(Tier.EXACT)


def test_choose_passes_over_a_precision_that_misses_its_tier_and_says_why() -> None:
    bad_int8 = Quality(items=100, cosine_min=0.836, cosine_mean=0.955)
    chosen, reasons = choose(["int8", "bf16", "fp32"], {"int8": bad_int8})
    # bf16 has no measurement: taken on its promise.
    assert chosen == "bf16"
    assert reasons == ["int8 misses its reduced tier (cosine min 0.83600 / mean 0.95500)"]
    bad_bf16 = Quality(items=100, cosine_min=0.99, cosine_mean=0.995)
    chosen, reasons = choose(["int8", "bf16", "fp32"], {"int8": bad_int8, "bf16": bad_bf16})
    assert chosen == "fp32" and len(reasons) == 2 and "bf16 misses its near tier" in reasons[1]
    good = Quality(items=100, cosine_min=0.9995, cosine_mean=0.9999)
    assert choose(["bf16", "fp32"], {"bf16": good}) == ("bf16", [])
    # fp32 is the reference: always acceptable, whatever a measurement says.
    assert choose(["fp32"], {"fp32": bad_bf16}) == ("fp32", [])
