"""Fold BatchNorm into the convolution that feeds it, found by watching one forward pass.

Any ``Conv2d`` whose output tensor goes straight into a BatchNorm and nowhere else is folded:
``w' = w * g / sqrt(var + eps)``, ``b' = (b - mean) * g / sqrt(var + eps) + beta``. The pairs
are discovered from the tensors that actually flow (forward hooks), so the same pass serves
timm CNNs, CvT's convolutional projections and any conv+BN stem without per-model tables.
"""

from __future__ import annotations

import torch
from torch import nn


class ActAfterFold(nn.Module):
    """What remains of timm's BatchNormAct2d once its BatchNorm is folded: drop, then act."""

    def __init__(self, drop: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.drop = drop
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> nn.Conv2d:
    """Fold ``bn`` into ``conv`` in place, so that ``conv(x) == bn(conv(x))`` in eval mode.

    In place keeps the conv's own class: timm's Conv2dSame pads in ``forward``.
    """
    # Compute in float64 and round once, so the folded weights are as exact as fp32 allows.
    mean, var = bn.running_mean.double(), bn.running_var.double()
    inv_std = torch.rsqrt(var + bn.eps)
    scale = bn.weight.double() * inv_std if bn.affine else inv_std
    shift = bn.bias.double() if bn.affine else torch.zeros_like(mean)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)
    conv.weight.copy_(conv.weight.double() * scale.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter(((bias - mean) * scale + shift).to(conv.weight.dtype))
    return conv


def bn_remainder(bn: nn.Module) -> nn.Module:
    """What replaces a folded BatchNorm: Identity, or the activation a BatchNormAct carried."""
    act, drop = getattr(bn, "act", None), getattr(bn, "drop", None)
    if act is None and drop is None:
        return nn.Identity()
    return ActAfterFold(drop or nn.Identity(), act or nn.Identity())


@torch.no_grad()
def find_conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, bn name) for every conv whose output feeds exactly one BatchNorm only."""
    produced: dict[int, str] = {}  # id(output tensor) -> conv name
    consumers: dict[int, list[str]] = {}  # id(input tensor) -> leaf modules reading it
    alive: list[torch.Tensor] = []  # hold every seen tensor so no id is reused mid-trace

    def on_output(name: str):
        def hook(module, inputs, output) -> None:
            produced[id(output)] = name
            alive.append(output)

        return hook

    def on_input(name: str):
        def hook(module, inputs) -> None:
            for t in inputs:
                if isinstance(t, torch.Tensor):
                    consumers.setdefault(id(t), []).append(name)
                    alive.append(t)

        return hook

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(on_output(name)))
        if not list(module.children()) or isinstance(module, nn.modules.batchnorm._BatchNorm):
            handles.append(module.register_forward_pre_hook(on_input(name)))
    modules = dict(model.named_modules())
    try:
        model(example)
    finally:
        for h in handles:
            h.remove()
    pairs = []
    for tensor_id, conv_name in produced.items():
        readers = consumers.get(tensor_id, [])
        if len(readers) == 1 and isinstance(modules[readers[0]], nn.modules.batchnorm._BatchNorm):
            pairs.append((conv_name, readers[0]))
    return pairs


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@torch.no_grad()
def fold_all_conv_bn(model: nn.Module, example: torch.Tensor) -> int:
    """Fold every conv->BN pair in place; return how many were folded."""
    pairs = find_conv_bn_pairs(model, example)
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        fold_conv_bn(conv, bn)
        set_submodule(model, bn_name, bn_remainder(bn))
    return len(pairs)


def batchnorm_modules(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
