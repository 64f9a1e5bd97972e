"""McNemar's exact test on paired top-1 results: the numbers reports use to call a difference
noise or not."""

from __future__ import annotations

import numpy as np
import pytest

from edgevt.validate.evaluate import topk_correct
from edgevt.validate.significance import describe, flips, mcnemar_p, paired_top1


def test_flips_counts_discordant_images_only() -> None:
    ref = np.array([1, 1, 1, 0, 0, 1], dtype=bool)
    other = np.array([1, 0, 0, 1, 0, 1], dtype=bool)
    assert flips(ref, other) == (2, 1)
    assert flips(other, ref) == (1, 2)
    with pytest.raises(ValueError, match="different images"):
        flips(ref, other[:3])


@pytest.mark.parametrize(
    ("lost", "won", "p"),
    [
        (0, 0, 1.0),
        (5, 0, 2 / 32),  # all five discordant images one way: 2 * 0.5**5
        (0, 5, 2 / 32),
        (3, 1, 2 * 5 / 16),  # 2 * P(X <= 1), X ~ Bin(4, 1/2)
        (6, 5, 1.0),  # the two tails overlap: capped at 1
        (12, 9, 0.66362381),
        (52, 19, 1.1226865e-4),  # the aggressive PTQ of reports/qat_lite0_aggressive.md
    ],
)
def test_mcnemar_exact_p_values(lost: int, won: int, p: float) -> None:
    assert mcnemar_p(lost, won) == pytest.approx(p, rel=1e-6)


def test_mcnemar_agrees_with_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for lost in range(0, 40, 3):
        for won in range(0, 40, 7):
            if lost + won:
                expected = stats.binomtest(won, lost + won).pvalue
                assert mcnemar_p(lost, won) == pytest.approx(expected, rel=1e-9)


def test_paired_top1_from_logits() -> None:
    labels = np.array([0, 1, 2, 3])
    eye = np.eye(4)
    ref = eye[[0, 1, 2, 0]]  # right on images 0-2
    other = eye[[0, 0, 2, 3]]  # loses image 1, wins image 3
    assert paired_top1(labels, ref, other) == {"lost": 1, "won": 1, "p_value": 1.0}
    assert describe(52, 19, mcnemar_p(52, 19)) == "52 lost / 19 won, p=0.00011: significant"
    assert describe(12, 9, mcnemar_p(12, 9)).endswith(": within noise")


def test_won_minus_lost_is_the_top1_difference_even_with_tied_logits() -> None:
    """int8 logits are quantized: two classes often tie for first. lost / won must count an
    image right or wrong exactly as top-1 does."""
    gen = np.random.default_rng(0)
    labels = gen.integers(0, 10, 500)
    ref = gen.normal(size=(500, 10))
    other = np.round(ref + gen.normal(scale=0.3, size=ref.shape))  # coarse grid: many ties
    assert (np.sort(other, 1)[:, -1] == np.sort(other, 1)[:, -2]).sum() > 20
    paired = paired_top1(labels, ref, other)
    diff = int(topk_correct(other, labels, 1).sum()) - int(topk_correct(ref, labels, 1).sum())
    assert paired["won"] - paired["lost"] == diff
