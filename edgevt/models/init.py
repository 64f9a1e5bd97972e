"""Non-degenerate random weights for tests and demos without a real checkpoint.

timm zero-initialises the BatchNorm scale that closes each LeViT residual branch and the
attention biases, so a freshly built levit_128s outputs (almost) a constant and converters fold
its blocks away. Fresh BatchNorms also hold identity statistics, which makes a fusion check
prove nothing. Every random-weight model in edgevt goes through this one helper.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def randomize_degenerate_parameters(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, and every
    LeViT attention-bias table random values. Returns ``model`` (changed in place)."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(t: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return torch.rand(t.shape, generator=gen, dtype=t.dtype) * (hi - lo) + lo

    def normal(t: torch.Tensor, std: float) -> torch.Tensor:
        return torch.randn(t.shape, generator=gen, dtype=t.dtype) * std

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.weight is not None:
                module.weight.copy_(uniform(module.weight, 0.5, 1.5))
                module.bias.copy_(normal(module.bias, 0.1))
            if module.running_mean is not None:
                module.running_mean.copy_(normal(module.running_mean, 0.1))
                module.running_var.copy_(uniform(module.running_var, 0.5, 1.5))
        biases = getattr(module, "attention_biases", None)
        if isinstance(biases, nn.Parameter):
            biases.copy_(normal(biases, 1.0))
    clear_attention_bias_caches(model)
    return model


def clear_attention_bias_caches(model: nn.Module) -> None:
    """timm's LeViT caches gathered attention biases in eval mode; drop them after any
    change of weights so the next forward sees the new values."""
    for module in model.modules():
        if isinstance(getattr(module, "attention_bias_cache", None), dict):
            module.attention_bias_cache = {}
