"""Helpers shared by tests (importable as ``tests.helpers``)."""

from __future__ import annotations

import functools

import pytest
import torch

from edgevt.data.imagenet import default_data_root

# Zoo models too big for the default suite (CI runs them with `pytest -m slow`).
SLOW_MODELS = {"cvt_21", "cvt_w24", "levit_256", "levit_384"}


@functools.lru_cache(maxsize=4)
def real_images(name: str, n: int = 4) -> torch.Tensor:
    """``n`` preprocessed real calibration images for zoo model ``name``."""
    from edgevt.data.imagenet import sample_batch
    from edgevt.models import get_entry

    images, reason = sample_batch(
        get_entry(name).preprocess, default_data_root() / "imagenet-sample1000", n
    )
    if images is None:
        pytest.skip(reason)
    return torch.from_numpy(images)


def zoo_params(names: list[str]) -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_MODELS else n for n in names]
