"""Is a top-1 difference between two models on the same images more than noise?

Two models scored on the same images differ only on the images one gets right and the other
wrong (the discordant pairs). McNemar's exact test asks how likely a split at least that uneven
is if either model were equally likely to win each of them: a binomial(n, 1/2) tail. On 1000
images a 0.3-pt drop is often 12 lost / 9 won, p ≈ 0.66: not a measurable difference.
"""

from __future__ import annotations

from math import comb

import numpy as np

from edgevt.validate.evaluate import topk_correct


def flips(right_ref: np.ndarray, right_other: np.ndarray) -> tuple[int, int]:
    """(lost, won): images ``ref`` gets right and ``other`` wrong, and the reverse."""
    right_ref = np.asarray(right_ref, dtype=bool)
    right_other = np.asarray(right_other, dtype=bool)
    if right_ref.shape != right_other.shape:
        raise ValueError(f"scored on different images: {right_ref.shape} vs {right_other.shape}")
    return int((right_ref & ~right_other).sum()), int((~right_ref & right_other).sum())


def mcnemar_p(lost: int, won: int) -> float:
    """Two-sided exact McNemar p-value of ``lost`` vs ``won`` discordant images."""
    n = lost + won
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(lost, won) + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def paired_top1(
    labels: np.ndarray, ref_logits: np.ndarray, other_logits: np.ndarray
) -> dict[str, float | int]:
    """Top-1 lost / won of ``other`` against ``ref`` on the same images, and the p-value."""
    # Right or wrong exactly as top-1 counts it (ties in int8 logits included), so won − lost
    # is always the top-1 difference in images.
    lost, won = flips(topk_correct(ref_logits, labels, 1), topk_correct(other_logits, labels, 1))
    return {"lost": lost, "won": won, "p_value": mcnemar_p(lost, won)}


def describe(lost: int, won: int, p_value: float) -> str:
    """One phrase for a report: '12 lost / 9 won, p=0.66: within noise'."""
    verdict = "significant" if p_value < 0.05 else "within noise"
    return f"{lost} lost / {won} won, p={p_value:.2g}: {verdict}"
