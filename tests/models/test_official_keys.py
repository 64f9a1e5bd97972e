"""Converters between the original authors' checkpoint keys and the models edgevt builds."""

from __future__ import annotations

import random

import pytest
import timm
import torch
from torch import nn
from transformers import CvtConfig, CvtForImageClassification

from edgevt.errors import CheckpointError
from edgevt.models.cvt_official import hf_cvt_to_official, official_cvt_to_hf
from edgevt.models.levit_official import official_levit_to_timm, timm_levit_to_official


@torch.no_grad()
def _randomise(model: nn.Module) -> nn.Module:
    """Give norms and attention-bias tables distinct values: the libraries initialise them to
    constants (timm zeroes LeViT's biases), which would hide two such tensors being swapped."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.weight.uniform_(0.5, 1.5)
            module.bias.normal_(0.0, 0.1)
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
        elif isinstance(module, nn.LayerNorm):
            module.weight.uniform_(0.5, 1.5)
            module.bias.normal_(0.0, 0.1)
        biases = getattr(module, "attention_biases", None)
        if isinstance(biases, nn.Parameter):
            biases.normal_(0.0, 1.0)
    return model.eval()


def _shuffled(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    items = list(state_dict.items())
    random.Random(0).shuffle(items)
    return dict(items)


def _levit(name: str = "levit_128s") -> nn.Module:
    return timm.create_model(name).eval()


def _cvt(**config) -> nn.Module:
    return CvtForImageClassification(CvtConfig(num_labels=1000, **config)).eval()


@pytest.fixture(scope="module")
def levit() -> nn.Module:
    torch.manual_seed(0)
    return _randomise(_levit())


@pytest.fixture(scope="module")
def cvt() -> nn.Module:
    torch.manual_seed(0)
    return _randomise(_cvt())


# Real key names of the official models, read off the module structure of
# facebookresearch/LeViT levit.py for LeViT-128S (depths 2, 3, 4: the flat `blocks` list holds
# attention/MLP pairs 0-3, AttentionSubsample 4 + MLP 5, pairs 6-11, subsample 12 + MLP 13,
# pairs 14-21) and of microsoft/CvT lib/models/cls_cvt.py for CvT-13 (depths 1, 2, 10).
LEVIT_KEYS = {
    "patch_embed.0.c.weight": "stem.conv1.linear.weight",
    "patch_embed.6.bn.running_var": "stem.conv4.bn.running_var",
    "blocks.0.m.qkv.c.weight": "stages.0.blocks.0.attn.qkv.linear.weight",
    "blocks.2.m.proj.1.bn.weight": "stages.0.blocks.1.attn.proj.ln.bn.weight",
    "blocks.3.m.2.c.weight": "stages.0.blocks.1.mlp.ln2.linear.weight",
    "blocks.4.kv.c.weight": "stages.1.downsample.attn_downsample.kv.linear.weight",
    "blocks.4.q.1.c.weight": "stages.1.downsample.attn_downsample.q.ln.linear.weight",
    "blocks.4.attention_biases": "stages.1.downsample.attn_downsample.attention_biases",
    "blocks.5.m.0.bn.running_mean": "stages.1.downsample.mlp.ln1.bn.running_mean",
    "blocks.6.m.attention_biases": "stages.1.blocks.0.attn.attention_biases",
    "blocks.12.proj.1.bn.num_batches_tracked": (
        "stages.2.downsample.attn_downsample.proj.ln.bn.num_batches_tracked"
    ),
    "blocks.21.m.2.bn.bias": "stages.2.blocks.3.mlp.ln2.bn.bias",
    "head.l.weight": "head.linear.weight",
    "head_dist.bn.running_var": "head_dist.bn.running_var",
}
_HF = "cvt.encoder.stages."
CVT_KEYS = {
    "stage0.patch_embed.proj.weight": _HF + "0.embedding.convolution_embeddings.projection.weight",
    "stage1.patch_embed.norm.bias": _HF + "1.embedding.convolution_embeddings.normalization.bias",
    "stage0.blocks.0.attn.conv_proj_q.conv.weight": _HF + "0.layers.0.attention.attention."
    "convolution_projection_query.convolution_projection.convolution.weight",
    "stage1.blocks.1.attn.conv_proj_v.bn.running_var": _HF + "1.layers.1.attention.attention."
    "convolution_projection_value.convolution_projection.normalization.running_var",
    "stage2.blocks.9.attn.proj_k.weight": _HF
    + "2.layers.9.attention.attention.projection_key.weight",
    "stage2.blocks.9.attn.proj.bias": _HF + "2.layers.9.attention.output.dense.bias",
    "stage2.blocks.0.mlp.fc1.weight": _HF + "2.layers.0.intermediate.dense.weight",
    "stage2.blocks.0.mlp.fc2.bias": _HF + "2.layers.0.output.dense.bias",
    "stage1.blocks.0.norm1.weight": _HF + "1.layers.0.layernorm_before.weight",
    "stage1.blocks.0.norm2.bias": _HF + "1.layers.0.layernorm_after.bias",
    "stage2.cls_token": _HF + "2.cls_token",
    "norm.weight": "layernorm.weight",
    "head.bias": "classifier.bias",
}


def test_levit_real_official_names_map_to_timm(levit: nn.Module) -> None:
    official = timm_levit_to_official(levit.state_dict(), levit)
    for name, timm_name in LEVIT_KEYS.items():
        assert name in official, name
        assert torch.equal(official[name], levit.state_dict()[timm_name]), name


def test_cvt_real_official_names_map_to_hf(cvt: nn.Module) -> None:
    official = hf_cvt_to_official(cvt.state_dict(), cvt)
    for name, hf_name in CVT_KEYS.items():
        assert name in official, name
        assert torch.equal(official[name], cvt.state_dict()[hf_name]), name


def test_levit_round_trip_shuffled(levit: nn.Module) -> None:
    official = timm_levit_to_official(levit.state_dict(), levit)
    # The official model persists its int64 bias-index tables: (N, N) and (N_, N) for subsample.
    assert official["blocks.0.m.attention_bias_idxs"].shape == (196, 196)
    assert official["blocks.4.attention_bias_idxs"].shape == (49, 196)
    assert official["blocks.4.attention_bias_idxs"].dtype == torch.int64
    fresh = _levit()
    fresh.load_state_dict(official_levit_to_timm(_shuffled(official), fresh), strict=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(fresh(x), levit(x))


def test_cvt_round_trip_shuffled(cvt: nn.Module) -> None:
    official = hf_cvt_to_official(cvt.state_dict(), cvt)
    fresh = _cvt()
    fresh.load_state_dict(official_cvt_to_hf(_shuffled(official), fresh), strict=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(fresh(x).logits, cvt(x).logits)


def test_levit_missing_key_is_named(levit: nn.Module) -> None:
    official = timm_levit_to_official(levit.state_dict(), levit)
    del official["blocks.4.q.1.c.weight"]
    with pytest.raises(CheckpointError, match=r"missing, first blocks\.4\.q\.1\.c\.weight"):
        official_levit_to_timm(official, _levit())


def test_cvt_missing_key_is_named(cvt: nn.Module) -> None:
    official = hf_cvt_to_official(cvt.state_dict(), cvt)
    del official["stage2.cls_token"]
    with pytest.raises(CheckpointError, match=r"missing, first stage2\.cls_token"):
        official_cvt_to_hf(official, _cvt())


def test_levit_other_size_is_refused(levit: nn.Module) -> None:
    bigger = _levit("levit_128")
    official = timm_levit_to_official(bigger.state_dict(), bigger)
    with pytest.raises(CheckpointError, match=r"blocks\.\d+\..*another LeViT size.*levit_128s"):
        official_levit_to_timm(official, _levit())


def test_cvt_other_size_is_refused() -> None:
    bigger = _cvt(depth=[1, 4, 16])  # cvt-21
    official = hf_cvt_to_official(bigger.state_dict(), bigger)
    with pytest.raises(CheckpointError, match=r"stage[12]\.blocks\.\d+\..*another CvT size"):
        official_cvt_to_hf(official, _cvt())


def test_shape_mismatch_names_key_and_shapes(levit: nn.Module) -> None:
    official = timm_levit_to_official(levit.state_dict(), levit)
    official["head.l.weight"] = torch.zeros(10, 384)  # a fine-tuned 10-class head
    with pytest.raises(
        CheckpointError, match=r"head\.l\.weight has shape \(10, 384\).*\(1000, 384\)"
    ):
        official_levit_to_timm(official, _levit())


def test_unknown_key_is_named(cvt: nn.Module) -> None:
    official = hf_cvt_to_official(cvt.state_dict(), cvt)
    official["stage0.pos_embed"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"stage0\.pos_embed"):
        official_cvt_to_hf(official, _cvt())


def test_missing_batchnorm_counters_are_tolerated(levit: nn.Module) -> None:
    official = timm_levit_to_official(levit.state_dict(), levit)
    official = {k: v for k, v in official.items() if not k.endswith("num_batches_tracked")}
    fresh = _levit()
    fresh.load_state_dict(official_levit_to_timm(official, fresh), strict=True)
