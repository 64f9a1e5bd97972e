"""Fusion: verified rewrites of the nn.Module for inference.

``fuse_model`` applies the rewrites of the model's family, then proves two things: no
BatchNorm module remains, and the logits on the given (real) images moved by less than
``1e-4 x`` their range. Either failure raises ``FusionError``; success returns a report.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgevt.errors import FusionError
from edgevt.fuse.batchnorm import batchnorm_modules, fold_all_conv_bn
from edgevt.fuse.levit import (
    fold_levit_batchnorms,
    merge_distillation_head,
    precompute_attention_biases,
)

RELATIVE_TOLERANCE = 1e-4  # of the fp32 logit range


@dataclass
class FuseReport:
    rewrites: dict[str, int]
    batchnorm_before: int
    batchnorm_after: int
    max_abs_diff: float
    logit_range: float
    tolerance: float
    inputs: str

    @property
    def ok(self) -> bool:
        return self.batchnorm_after == 0 and self.max_abs_diff <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def apply_rewrites(model: nn.Module, family: str, example: torch.Tensor) -> dict[str, int]:
    """Rewrite ``model`` in place; return how many times each rewrite fired."""
    rewrites: dict[str, int] = {}
    if family == "levit":
        rewrites["levit_fold_batchnorm"] = fold_levit_batchnorms(model)
        rewrites["merge_distillation_head"] = merge_distillation_head(model)
        rewrites["precompute_attention_biases"] = precompute_attention_biases(model)
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
    if left:
        raise FusionError(
            f"fusion left {len(left)} BatchNorm module(s), e.g. {', '.join(left[:3])}: their "
            "input is not produced by a foldable Conv2d/Linear. Please report this model."
        )
    if not report.ok:
        raise FusionError(
            f"fusion changed the logits by {diff:.3g} (allowed {report.tolerance:.3g}, 1e-4 of "
            f"the logit range {logit_range:.3g}); not using the fused model."
        )
    return fused, report


def fused_skeleton(model: nn.Module, family: str, input_size: int) -> nn.Module:
    """The fused module structure for ``model`` (weights to be loaded from ``fused.pt``)."""
    model = model.eval()
    apply_rewrites(model, family, torch.zeros(1, 3, input_size, input_size))
    return model


def verification_batch(
    preprocess, data_dir: str | Path | None = None, n: int = 8
) -> tuple[torch.Tensor, str]:
    """``n`` real preprocessed images from ``data_dir`` (an image folder), or random inputs
    with a note saying so when no folder is available."""
    from edgevt.data.imagenet import open_dataset

    if data_dir is not None and Path(data_dir).is_dir():
        dataset = open_dataset(data_dir, require_labels=False)
        samples = dataset.subset(n) if dataset.labelled else dataset
        images = np.stack([preprocess.load(s.path) for s in list(samples)[:n]])
        return torch.from_numpy(images), f"{len(images)} real images from {data_dir}"
    gen = torch.Generator().manual_seed(0)
    size = preprocess.input_size
    return torch.randn(n, 3, size, size, generator=gen), f"{n} random inputs (no image folder)"
