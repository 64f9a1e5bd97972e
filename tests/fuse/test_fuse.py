"""The fusion rewrites, each checked on its own, and the verification that guards them."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from edgevt.artifact import ArtifactInfo
from edgevt.data.imagenet import imagenet_synsets
from edgevt.errors import FusionError
from edgevt.fuse import fuse_model
from edgevt.fuse.batchnorm import ActAfterFold, find_conv_bn_pairs, fold_all_conv_bn
from edgevt.models import load_model
from edgevt.targets.onnx import export_onnx
from tests.helpers import real_images


def _random_bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    return bn.eval()


class ConvBN(nn.Module):
    def __init__(self, groups: int = 1, bias: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups, bias=bias)
        self.bn = _random_bn(8)

    def forward(self, x):
        return self.bn(self.conv(x))


class SharedConvOutput(nn.Module):
    """The conv output also feeds a residual add: folding the BN would change that path."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)
        self.bn = _random_bn(8)
        self.act = nn.ReLU()

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + self.act(y)


@pytest.mark.parametrize("groups,bias", [(1, False), (8, False), (1, True)])
def test_conv_bn_fold_is_exact(groups, bias) -> None:
    torch.manual_seed(0)
    model = ConvBN(groups, bias).eval()
    x = torch.randn(2, 8, 10, 10)
    expected = model(x)
    assert fold_all_conv_bn(model, x) == 1
    assert isinstance(model.bn, nn.Identity)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_conv_whose_output_is_shared_is_not_folded() -> None:
    model = SharedConvOutput().eval()
    assert find_conv_bn_pairs(model, torch.randn(1, 8, 4, 4)) == []


def test_timm_batchnorm_act_keeps_its_activation() -> None:
    from timm.layers import BatchNormAct2d

    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    bn = BatchNormAct2d(8, act_layer=nn.ReLU6)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    model = nn.Sequential(conv, bn).eval()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    fold_all_conv_bn(model, x)
    assert isinstance(model[1], ActAfterFold) and isinstance(model[1].act, nn.ReLU6)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_levit_fusion_merges_heads_and_freezes_attention_biases(tmp_path, data_root) -> None:
    loaded = load_model("levit_128s")
    images = real_images("levit_128s", 4)
    fused, report = fuse_model(loaded.model, "levit", images)
    assert report.rewrites["levit_fold_batchnorm"] == 52
    assert report.rewrites["merge_distillation_head"] == 1
    assert report.rewrites["precompute_attention_biases"] == 11
    assert report.rewrites["subsample_without_strides"] == 2  # 14 -> 7 and 7 -> 4 tokens a side
    assert not hasattr(fused, "head_dist") and isinstance(fused.head, nn.Linear)
    assert not any(n.endswith("attention_biases") for n, _ in fused.named_parameters())
    # The exported graph holds constant bias tables: no Gather of attention_bias_idxs.
    info = ArtifactInfo("levit_128s", loaded.entry.preprocess, imagenet_synsets())
    graph = onnx.load(str(export_onnx(fused, info, tmp_path / "m.onnx"))).graph
    assert not [n for n in graph.node if n.op_type == "Gather" and "bias" in "".join(n.input)]
    unfused = onnx.load(str(export_onnx(loaded.model, info, tmp_path / "u.onnx"))).graph
    assert len(graph.node) < len(unfused.node)


@pytest.mark.parametrize("resolution,stride", [(14, 2), (7, 2), (9, 3), (4, 1)])
def test_subsampling_without_strides_moves_the_same_values(resolution: int, stride: int) -> None:
    """LiteRT's XNNPACK takes no strided slice: the rewrite picks rows and columns 0, s, 2s...
    by reshapes and unit-stride slices (zero-padded to a multiple of s), the same values."""
    from timm.models.levit import Downsample

    from edgevt.fuse.levit import subsample_without_strides

    module = nn.Sequential(Downsample(stride, resolution))
    x = torch.randn(3, resolution * resolution, 5)
    expected = module(x)
    assert subsample_without_strides(module) == 1
    assert torch.equal(module(x), expected)
    pooled = nn.Sequential(Downsample(stride, resolution, use_pool=True))
    assert subsample_without_strides(pooled) == 0  # an average pool is not a subsampling


def test_fusion_that_changes_numerics_is_refused(monkeypatch, data_root) -> None:
    import edgevt.fuse as fuse_module

    real_rewrites = fuse_module.apply_rewrites

    def broken(model, family, example):
        rewrites = real_rewrites(model, family, example)
        with torch.no_grad():
            model.head.bias.add_(1.0)  # a rewrite that is subtly wrong
        return rewrites

    monkeypatch.setattr(fuse_module, "apply_rewrites", broken)
    loaded = load_model("levit_128s")
    with pytest.raises(FusionError, match="changed the logits"):
        fuse_module.fuse_model(loaded.model, "levit", real_images("levit_128s", 2))


def test_batchnorm_left_behind_is_refused() -> None:
    class Odd(nn.Module):  # a BatchNorm fed by an op, not by a conv
        def __init__(self) -> None:
            super().__init__()
            self.bn = _random_bn(3)

        def forward(self, x):
            return self.bn(x * 2).mean((2, 3))

    with pytest.raises(FusionError, match="left 1 BatchNorm"):
        fuse_model(Odd().eval(), "cnn", torch.randn(2, 3, 8, 8))
