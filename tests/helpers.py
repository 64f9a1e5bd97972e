"""Helpers shared by tests (importable as ``tests.helpers``)."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

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


def rules(target: str):
    """The int8 rules a registered target quantizes by."""
    from edgevt.targets import get_target

    return get_target(target).quantization_rules()


TINY = "tiny_cnn"


class TinyCnn(nn.Module):
    """Conv + BatchNorm + ReLU6, a residual add, a matmul-shaped head: what every target must
    carry, in a model that converts in seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn(self.conv(x)))
        y = y + self.conv2(y)
        return self.head(y.mean((2, 3)))


def _build() -> nn.Module:
    torch.manual_seed(0)
    model = TinyCnn()
    with torch.no_grad():  # a BatchNorm that folds to something, not the identity
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model


def tiny_model() -> str:
    """Register (once) and name a zoo entry for ``TinyCnn``: 32 px inputs, seconds per target."""
    return _register(TINY, _build)


def _register(name: str, build) -> str:
    from edgevt.data.preprocess import Preprocess
    from edgevt.models import list_models
    from edgevt.models.registry import ModelEntry, register_model

    if name not in list_models():
        register_model(ModelEntry(
            name=name, family="cnn", build=build,
            preprocess=Preprocess(input_size=32, crop_pct=0.875, interpolation="bilinear"),
            source="tests", convert_state_dict=lambda sd, model: ("timm", sd),
        ))  # fmt: skip
    return name


TINY_BLOCK = "tiny_block"


class TinyBlock(nn.Module):
    """A conv stem, then one pre-norm MLP block on its tokens (LayerNorm, GELU): the ops CvT's
    int8 splits XNNPACK's graph on, in a model that converts in seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.norm = nn.LayerNorm(16)
        self.fc1, self.act, self.fc2 = nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16)
        self.head = nn.Linear(16, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x).flatten(2).transpose(1, 2)
        y = y + self.fc2(self.act(self.fc1(self.norm(y))))
        return self.head(y.mean(1))


def tiny_block() -> str:
    """Register (once) and name a zoo entry for ``TinyBlock`` (32 px inputs)."""

    def build() -> nn.Module:
        torch.manual_seed(0)
        return TinyBlock()

    return _register(TINY_BLOCK, build)
