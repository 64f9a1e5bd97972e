"""Fake quantization of the fused PyTorch model: int8 numerics simulated in float.

It follows a target's rules exactly as the QDQ export does (same ranges, same zero points,
same weight bits), so layer sensitivity can be measured without rebuilding an ONNX graph per
layer, and quantization-aware training starts from what PTQ exports.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from edgevt.quant.calibrate import OpTracer, QuantOp
from edgevt.quant.config import QuantConfig
from edgevt.quant.rules import TargetRules
from edgevt.quant.table import CalibrationTable


def activation_qparams(lo: float, hi: float, signed: bool) -> tuple[float, int, int, int]:
    """(scale, zero point, qmin, qmax) as ONNX Runtime's quantizer derives them."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if signed:
        amax = max(-lo, hi, 1e-12)
        return amax / 127.0, 0, -127, 127
    scale = max(hi - lo, 1e-12) / 255.0
    return scale, int(round(-lo / scale)), 0, 255


def fake_quant(x: torch.Tensor, scale: float, zero: int, qmin: int, qmax: int) -> torch.Tensor:
    return (torch.clamp(torch.round(x / scale) + zero, qmin, qmax) - zero) * scale


def fake_quant_weight(w: torch.Tensor, qmax: int, per_channel: bool) -> torch.Tensor:
    flat = w.abs().reshape(w.shape[0], -1)
    amax = flat.amax(dim=1) if per_channel else flat.amax().expand(w.shape[0])
    scale = (amax.clamp_min(1e-12) / qmax).reshape(-1, *([1] * (w.dim() - 1)))
    return torch.clamp(torch.round(w / scale), -qmax, qmax) * scale


class FakeQuantModel:
    """A copy of ``model`` whose ops run as the target would run them in int8.

    ``set_active(names)`` restricts quantization to some op names (sensitivity analysis) without
    copying the model again; by default every op the config quantizes is active.
    """

    def __init__(
        self,
        model: nn.Module,
        table: CalibrationTable,
        config: QuantConfig,
        rules: TargetRules,
    ) -> None:
        self.model = copy.deepcopy(model).eval()
        self.table, self.rules = table, rules
        ops = table.source.get("ops", {})
        self.ops = {n: t for n, t in ops.items() if config.resolve(n, t) is not None}
        self.modules = dict(self.model.named_modules())
        self._float: dict[str, torch.Tensor] = {}
        self._quant: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, op_type in self.ops.items():
                if op_type == "matmul":
                    continue
                module = self.modules[name]
                per_channel = config.resolve(name, op_type).weights == "per_channel"
                qmax = rules.weight_qmax(getattr(module, "groups", 1) > 1)
                self._float[name] = module.weight.detach().clone()
                self._quant[name] = fake_quant_weight(module.weight, qmax, per_channel)
        self.active: set[str] = set()
        self.set_active(self.ops)

    def set_active(self, names: Iterable[str]) -> None:
        self.active = set(names) & set(self.ops)
        with torch.no_grad():
            for name, w in self._float.items():
                source = self._quant[name] if name in self.active else w
                self.modules[name].weight.copy_(source)

    def _rewrite(self, op: QuantOp, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        if op.name not in self.active:
            return inputs
        out = []
        for key, x in zip(op.input_keys, inputs, strict=True):
            r = self.table.activations[key]
            qparams = activation_qparams(r.min, r.max, self.rules.signed_activations)
            out.append(fake_quant(x, *qparams))
        return out

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with OpTracer(self.model, rewrite=self._rewrite):
            return self.model(images)
