"""Observers: stream a tensor's values, then say which range to quantize it with.

One histogram serves every method, so a single calibration pass can be re-derived with another
method later. The histogram is signed, symmetric about zero, and doubles its range (merging
bin pairs) when a batch exceeds it, so it needs no first min-max pass.
"""

from __future__ import annotations

import math

import numpy as np
import torch

METHODS = ("minmax", "percentile", "entropy", "mse")
DEFAULT_PERCENTILE = 99.99
HALF_BINS = 2048  # bins per sign; TensorRT's entropy calibrator uses 2048 on |x| too


class RangeObserver:
    """Min, max and a histogram of everything ``observe`` has seen."""

    def __init__(self, half_bins: int = HALF_BINS) -> None:
        self.half_bins = half_bins
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.limit = 0.0  # the histogram covers [-limit, limit]
        self.hist: torch.Tensor | None = None

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float().flatten()
        if x.numel() == 0:
            return
        lo, hi = torch.aminmax(x)
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("non-finite values (inf/NaN) in an activation")
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += x.numel()
        extent = max(abs(lo), abs(hi), 1e-12)
        if self.hist is None:
            self.limit = extent
            self.hist = torch.zeros(2 * self.half_bins, dtype=torch.float64)
        while extent > self.limit:
            self._double()
        self.hist += torch.histc(
            x, bins=2 * self.half_bins, min=-self.limit, max=self.limit
        ).double()

    def _double(self) -> None:
        assert self.hist is not None
        b = self.half_bins
        merged = self.hist.view(b, 2).sum(1)  # old bins (2i, 2i+1) -> one bin of twice the width
        self.hist = torch.zeros_like(self.hist)
        self.hist[b // 2 : b // 2 + b] = merged
        self.limit *= 2

    def range(
        self, method: str = "minmax", percentile: float = DEFAULT_PERCENTILE
    ) -> tuple[float, float]:
        """(min, max) to quantize with; histogram methods clip outliers, never widen."""
        if self.count == 0:
            raise ValueError("observer saw no data")
        if method == "minmax":
            return self.min, self.max
        hist = self.hist.numpy()
        if method == "percentile":
            lo, hi = _percentile_range(hist, self.limit, percentile)
            return max(self.min, lo), min(self.max, hi)
        b = self.half_bins
        abs_hist = hist[b:] + hist[:b][::-1]  # fold onto |x|: bin i covers [i, i+1) * limit/b
        unsigned = self.min >= 0
        if method == "entropy":
            amax = entropy_amax(abs_hist, self.limit, unsigned)
        elif method == "mse":
            amax = mse_amax(abs_hist, self.limit, unsigned)
        else:
            raise ValueError(f"unknown calibration method {method!r}; choose from {METHODS}")
        return max(self.min, -amax), min(self.max, amax)

    def state(self) -> dict:
        return {"min": self.min, "max": self.max, "count": self.count}


def _percentile_range(hist: np.ndarray, limit: float, percentile: float) -> tuple[float, float]:
    edges = np.linspace(-limit, limit, len(hist) + 1)
    cdf = np.cumsum(hist) / hist.sum()
    tail = 1.0 - percentile / 100.0
    lo_bin = int(np.searchsorted(cdf, tail, side="left"))
    hi_bin = int(np.searchsorted(cdf, 1.0 - tail, side="left"))
    return float(edges[lo_bin]), float(edges[min(hi_bin + 1, len(hist))])


def _candidates(nbins: int, start: int = 128, stride: int = 8) -> np.ndarray:
    start = min(start, nbins)
    return np.unique(np.append(np.arange(start, nbins + 1, stride), nbins))


def entropy_amax(abs_hist: np.ndarray, limit: float, unsigned: bool = False) -> float:
    """TensorRT's entropy (KL) calibration on a histogram of |x| over [0, limit]: the clipping
    threshold whose 8-bit quantized distribution diverges least from the clipped original."""
    nbins = len(abs_hist)
    levels = 256 if unsigned else 128
    hist = abs_hist.astype(np.float64)
    best, best_kl = nbins, math.inf
    for i in _candidates(nbins):
        ref = hist[:i].copy()
        ref[-1] += hist[i:].sum()  # outliers are clipped onto the last bin
        # quantize bins [0, i) onto `levels` levels, spreading each level over its non-empty bins
        level_of = np.minimum((np.arange(i) * levels) // i, levels - 1)
        nonzero = hist[:i] > 0
        mass = np.bincount(level_of, weights=hist[:i], minlength=levels)
        width = np.bincount(level_of, weights=nonzero.astype(np.float64), minlength=levels)
        q = np.where(nonzero, mass[level_of] / np.maximum(width[level_of], 1), 0.0)
        p_sum, q_sum = ref.sum(), q.sum()
        if p_sum == 0 or q_sum == 0:
            continue
        p, q = ref / p_sum, q / q_sum
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl <= best_kl:  # ties go to the wider range, as TensorRT's does
            best, best_kl = int(i), kl
    return best * limit / nbins


def mse_amax(abs_hist: np.ndarray, limit: float, unsigned: bool = False) -> float:
    """The clipping threshold minimising the expected squared 8-bit quantization error."""
    nbins = len(abs_hist)
    width = limit / nbins
    centers = (np.arange(nbins) + 0.5) * width
    levels = 255 if unsigned else 127
    cands = _candidates(nbins) * width
    step = cands[:, None] / levels
    quantized = np.minimum(np.round(centers[None, :] / step), levels) * step
    err = ((centers[None, :] - quantized) ** 2 * abs_hist[None, :]).sum(1)
    return float(cands[int(np.argmin(err))])
