"""Non-degenerate random weights for tests and demos without a real checkpoint.

timm zero-initialises the BatchNorm scale that closes each LeViT residual branch and the
attention biases, so a freshly built levit_128s outputs (almost) a constant and converters fold
its blocks away. Fresh BatchNorms also hold identity statistics (mean 0, var 1, scale 1,
shift 0), which makes a fusion check prove nothing. Every random-weight model in edgevt goes
through this one helper.
"""

from __future__ import annotations

import torch
from torch import nn

BIAS_STD = 1.0  # LeViT attention-bias tables: trained ones span a few units
BN_SCALE = (0.5, 1.5)  # BatchNorm scales, uniform
RESIDUAL_BN_SCALE = (0.1, 0.3)  # scales of the BatchNorms that close residual branches
BN_SHIFT_STD = 0.1
STATS_PIXELS = 64 * 224 * 224  # input pixels per forward pass estimating BatchNorm statistics


@torch.no_grad()
def randomize_degenerate_parameters(
    model: nn.Module, seed: int = 0, input_size: int = 224, images: torch.Tensor | None = None
) -> nn.Module:
    """Make a freshly built model behave like a trained one, numerically.

    1. BatchNorm affine parameters and LeViT attention-bias tables get random values.
    2. BatchNorm running statistics are re-estimated from a forward pass over ``images``
       (real preprocessed photographs; photo-like noise when None), so every layer sees
       unit-scale activations on real inputs. Random statistics instead blow channels up
       and wash the input out (near-constant logits again); statistics from white noise
       mis-scale the deep layers on photographs until attention saturates and the network
       amplifies rounding noise chaotically. The pass runs in chunks of at most
       ``STATS_PIXELS`` input pixels (64 images at 224: one chunk, and random LeViTs are
       sensitive to how the statistics were pooled; CvT-W24 at 384 in one pass needs 24 GB).

    Returns ``model`` in eval mode (changed in place).
    """
    gen = torch.Generator().manual_seed(seed)

    def uniform(t: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return torch.rand(t.shape, generator=gen, dtype=t.dtype) * (hi - lo) + lo

    def normal(t: torch.Tensor, std: float) -> torch.Tensor:
        return torch.randn(t.shape, generator=gen, dtype=t.dtype) * std

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for module in model.modules():
        biases = getattr(module, "attention_biases", None)
        if isinstance(biases, nn.Parameter):
            biases.copy_(normal(biases, BIAS_STD))
    for bn in norms:
        if bn.affine:
            # The library zero-initialised the BatchNorms that close residual branches: keep
            # those branches small, as training leaves them, or the residual stream grows with
            # depth until the network amplifies rounding noise chaotically.
            closes_residual = bool((bn.weight == 0).all())
            lo, hi = RESIDUAL_BN_SCALE if closes_residual else BN_SCALE
            bn.weight.copy_(uniform(bn.weight, lo, hi))
            bn.bias.copy_(normal(bn.bias, BN_SHIFT_STD))
        if bn.track_running_stats:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the pass below
    if norms:
        model.train()
        batch = images if images is not None else natural_noise(8, input_size, gen)
        per_chunk = max(1, STATS_PIXELS // (batch.shape[-1] * batch.shape[-2]))
        for chunk in batch.split(per_chunk):
            model(chunk)
        for bn in norms:
            bn.momentum = 0.1
    model.eval()
    clear_attention_bias_caches(model)
    return model


def natural_noise(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Random images with a photo-like spectrum (most energy at low spatial frequencies).

    White noise has statistics unlike real images; BatchNorm statistics estimated on it would
    mis-scale every layer once real photographs go through the network.
    """
    out = torch.zeros(n, 3, size, size)
    for cells, weight in ((4, 1.0), (16, 0.5), (64, 0.25), (size, 0.1)):
        coarse = torch.randn(n, 3, cells, cells, generator=gen)
        out += weight * nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    return out / out.std()


def clear_attention_bias_caches(model: nn.Module) -> None:
    """timm's LeViT caches gathered attention biases in eval mode; drop them after any
    change of weights so the next forward sees the new values."""
    for module in model.modules():
        if isinstance(getattr(module, "attention_bias_cache", None), dict):
            module.attention_bias_cache = {}
