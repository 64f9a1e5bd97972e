"""Fusion: verified rewrites of the nn.Module for inference.

``fuse_model`` applies the rewrites of the model's family, then proves two things: no
BatchNorm module remains, and the fp32 logits on the given (real) images moved by less than
``1e-4 x`` their range. A deep network can amplify float32 rounding beyond that bar on its
own (large random-weight LeViTs do); then the rewrite is accepted only if it is exact in
float64 and its fp32 difference stays within the network's own fp32-vs-fp64 noise floor.
Any failure raises ``FusionError``; success returns a report that says which test passed.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from edgevt.errors import FusionError
from edgevt.fuse.batchnorm import batchnorm_modules, fold_all_conv_bn
from edgevt.fuse.levit import (
    fold_levit_batchnorms,
    merge_distillation_head,
    precompute_attention_biases,
    subsample_without_strides,
)

RELATIVE_TOLERANCE = 1e-4  # of the fp32 logit range
FLOAT64_TOLERANCE = 1e-6  # of the logit range: the rewrite itself must be exact
NOISE_FLOOR_FACTOR = 4.0  # fp32 difference allowed, in units of the unfused fp32 rounding error


@dataclass
class FuseReport:
    rewrites: dict[str, int]
    batchnorm_before: int
    batchnorm_after: int
    max_abs_diff: float
    logit_range: float
    tolerance: float
    inputs: str
    float64_max_abs_diff: float | None = None  # fused vs unfused, both in float64
    fp32_noise_floor: float | None = None  # unfused fp32 vs unfused float64

    @property
    def within_tolerance(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    @property
    def ok(self) -> bool:
        if self.batchnorm_after:
            return False
        if self.within_tolerance:
            return True
        return (
            self.float64_max_abs_diff is not None
            and self.fp32_noise_floor is not None
            and self.float64_max_abs_diff <= FLOAT64_TOLERANCE * self.logit_range
            and self.max_abs_diff <= NOISE_FLOOR_FACTOR * self.fp32_noise_floor
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "within_tolerance": self.within_tolerance, "ok": self.ok}


def apply_rewrites(model: nn.Module, family: str, example: torch.Tensor) -> dict[str, int]:
    """Rewrite ``model`` in place; return how many times each rewrite fired."""
    rewrites: dict[str, int] = {}
    if family == "levit":
        rewrites["levit_fold_batchnorm"] = fold_levit_batchnorms(model)
        rewrites["merge_distillation_head"] = merge_distillation_head(model)
        rewrites["precompute_attention_biases"] = precompute_attention_biases(model)
        rewrites["subsample_without_strides"] = subsample_without_strides(model)
    # Any conv->BN left (CvT projections, CNNs, stems) is found from the tensors that flow.
    rewrites["fold_conv_batchnorm"] = fold_all_conv_bn(model, example[:1])
    return rewrites


@torch.no_grad()
def fuse_model(
    model: nn.Module, family: str, images: torch.Tensor, inputs: str = "images"
) -> tuple[nn.Module, FuseReport]:
    """Return a fused copy of ``model`` and the report that verifies it.

    Args:
        model: an eval-mode zoo model (not changed).
        family: the zoo entry's family (``levit``, ``cvt``, ``cnn``).
        images: a preprocessed batch the numerics are checked on (real images, ideally).
        inputs: how to describe ``images`` in the report.
    """
    model = model.eval()
    fused = copy.deepcopy(model).eval()
    before = len(batchnorm_modules(model))
    rewrites = apply_rewrites(fused, family, images)
    left = batchnorm_modules(fused)
    reference = model(images).float()
    output = fused(images).float()
    diff = float((reference - output).abs().max())
    logit_range = float(reference.max() - reference.min())
    report = FuseReport(
        rewrites=rewrites,
        batchnorm_before=before,
        batchnorm_after=len(left),
        max_abs_diff=diff,
        logit_range=logit_range,
        tolerance=RELATIVE_TOLERANCE * logit_range,
        inputs=inputs,
    )
    if not report.within_tolerance:
        report.float64_max_abs_diff, report.fp32_noise_floor = _float64_check(
            model, family, images, reference
        )
    if left:
        raise FusionError(
            f"fusion left {len(left)} BatchNorm module(s), e.g. {', '.join(left[:3])}: their "
            "input is not produced by a foldable Conv2d/Linear. Please report this model."
        )
    if not report.ok:
        raise FusionError(
            f"fusion changed the logits by {diff:.3g} (allowed {report.tolerance:.3g}, 1e-4 of "
            f"the logit range {logit_range:.3g}; in float64 the difference is "
            f"{report.float64_max_abs_diff:.3g}, this model's own fp32 rounding error "
            f"{report.fp32_noise_floor:.3g}); not using the fused model."
        )
    return fused, report


@torch.no_grad()
def _float64_check(
    model: nn.Module, family: str, images: torch.Tensor, reference32: torch.Tensor
) -> tuple[float, float]:
    """(fused vs unfused, both in float64; unfused fp32 vs unfused float64) max abs diffs."""
    from edgevt.models.init import clear_attention_bias_caches

    model64 = copy.deepcopy(model).double()
    clear_attention_bias_caches(model64)
    fused64 = copy.deepcopy(model64)
    apply_rewrites(fused64, family, images.double())
    reference64 = model64(images.double())
    exact = float((fused64(images.double()) - reference64).abs().max())
    floor = float((reference32.double() - reference64).abs().max())
    return exact, floor


def fused_skeleton(model: nn.Module, family: str, input_size: int) -> nn.Module:
    """The fused module structure for ``model`` (weights to be loaded from ``fused.pt``)."""
    model = model.eval()
    apply_rewrites(model, family, torch.zeros(1, 3, input_size, input_size))
    return model
