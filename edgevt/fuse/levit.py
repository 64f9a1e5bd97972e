"""LeViT rewrites: BatchNorm folding (timm's own ``fuse()``), one merged classifier head,
attention biases precomputed into constants, and token subsampling without strided slices."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def fold_levit_batchnorms(model: nn.Module) -> int:
    """timm's ConvNorm / LinearNorm / NormLinear carry ``fuse()``; reuse it via
    ``reparameterize_model``. Returns the number of BatchNorms folded."""
    from timm.utils.model import reparameterize_model

    before = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    # Fold in float64 and round once: the folded weights are as exact as the model's dtype
    # allows. timm's fuse() builds its new modules in the default dtype, hence the switch.
    dtype = next(model.parameters()).dtype
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model.double()
        reparameterize_model(model, inplace=True)
    finally:
        torch.set_default_dtype(default)
    model.to(dtype)
    after = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return before - after


@torch.no_grad()
def merge_distillation_head(model: nn.Module) -> int:
    """At inference LeViT averages ``head`` and ``head_dist``: fold them into one Linear.

    ``(W1 x + b1 + W2 x + b2) / 2 == ((W1 + W2) / 2) x + (b1 + b2) / 2``.
    """
    head, dist = getattr(model, "head", None), getattr(model, "head_dist", None)
    if not (isinstance(head, nn.Linear) and isinstance(dist, nn.Linear)):
        return 0
    merged = nn.Linear(head.in_features, head.out_features, dtype=head.weight.dtype)
    merged.weight.copy_((head.weight.double() + dist.weight.double()) / 2)
    merged.bias.copy_((head.bias.double() + dist.bias.double()) / 2)
    model.head = merged
    del model.head_dist
    model.__class__ = _single_head_class(type(model))
    return 1


def _single_head(self: nn.Module, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
    if self.global_pool == "avg":
        x = x.mean(dim=(-2, -1)) if self.use_conv else x.mean(dim=1)
    return x if pre_logits else self.head(x)


def _single_head_class(cls: type) -> type:
    return _subclass(cls, "SingleHead", forward_head=_single_head)


@torch.no_grad()
def precompute_attention_biases(model: nn.Module) -> int:
    """Replace each ``attention_biases[:, attention_bias_idxs]`` gather with a constant.

    The gathered (heads, N, N) table becomes a buffer; the parameter and index buffer go, so
    exported graphs hold one constant instead of a Gather on every inference.
    """
    count = 0
    for module in model.modules():
        biases = (
            module._parameters.get("attention_biases") if hasattr(module, "_parameters") else None
        )
        if biases is None or not hasattr(module, "attention_bias_idxs"):
            continue
        table = biases[:, module.attention_bias_idxs].detach().clone()
        del module.attention_biases
        del module.attention_bias_idxs
        module.register_buffer("attention_bias_table", table)
        module.attention_bias_cache = {}
        module.__class__ = _constant_bias_class(type(module))
        count += 1
    return count


def _constant_biases(self: nn.Module, device: torch.device) -> torch.Tensor:
    # timm's train()/_apply() only reset a cache we no longer use; keep them harmless.
    return self.attention_bias_table


def _constant_bias_class(cls: type) -> type:
    return _subclass(cls, "ConstantBias", get_attention_biases=_constant_biases)


@torch.no_grad()
def subsample_without_strides(model: nn.Module) -> int:
    """Rewrite each token subsampling ``x.view(B, H, W, C)[:, ::s, ::s]`` (timm's
    ``Downsample`` without pooling) as reshapes and unit-stride slices.

    LiteRT's XNNPACK delegate takes no strided slice, so each one ran in TFLite's
    single-threaded reference kernel and split the graph into three XNNPACK partitions (4 % of
    LeViT-128S's int8 time at one thread, all of it serial at two). Rows ``0, s, 2s, ...`` are
    the first of each group of ``s`` once the grid is zero-padded to a multiple of ``s``: the
    same values, moved, in any precision. At most 4-D, which every target's reshape takes.
    """
    count = 0
    for module in model.modules():
        if type(module).__name__ != "Downsample" or getattr(module, "pool", 1) is not None:
            continue
        module.__class__ = _unit_stride_class(type(module))
        count += 1
    return count


def _unit_stride_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    _, _, c = x.shape
    (h, w), s = self.resolution, self.stride
    hp, wp = -(-h // s) * s, -(-w // s) * s  # padded to a multiple of the stride
    x = x.reshape(-1, h, w, c)
    if (hp, wp) != (h, w):
        x = nn.functional.pad(x, (0, 0, 0, wp - w, 0, hp - h))
    x = x.reshape(-1, hp // s, s, wp * c)[:, :, :1]  # rows 0, s, 2s, ...
    x = x.reshape(-1, wp // s, s, c)[:, :, :1]  # columns 0, s, 2s, ...
    return x.reshape(-1, (hp // s) * (wp // s), c)


def _unit_stride_class(cls: type) -> type:
    return _subclass(cls, "UnitStride", forward=_unit_stride_forward)


def _subclass(cls: type, prefix: str, **methods: object) -> type:
    """``cls`` with ``methods`` replaced, one class per name (a module's ``__class__`` is
    swapped in place, keeping its weights, names and hooks)."""
    name = f"{prefix}{cls.__name__}"
    if name not in _CLASS_CACHE:
        _CLASS_CACHE[name] = type(name, (cls,), methods)
    return _CLASS_CACHE[name]


_CLASS_CACHE: dict[str, type] = {}
