"""The simulation of a target's int8 numerics in PyTorch: what QAT trains through, what
``--max-drop`` ranks layers with, and what the exporters' outputs are checked against.

* ``QuantSim`` quantizes exactly the tensors a target's exported QDQ graph quantizes (found by
  building that graph, ``onnx_qdq.quantized_tensors``) with the CalibrationTable's ranges and
  learnable ranges and weight clips (QAT); its step 0 is the PTQ artifact.
* ``FakeQuantModel`` quantizes the inputs of every op a config names, by the target's rules,
  without a graph to read (Core ML's rule: every conv, linear and matmul input).

Both use one fake-quant arithmetic, ``fake_quant``: ``(clamp(round(x / scale) + zero, qmin,
qmax) - zero) * scale``, with LSQ / LSQ+ straight-through gradients.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode

from edgevt.quant.calibrate import OpTracer, QuantOp, weight_amax
from edgevt.quant.config import QuantConfig
from edgevt.quant.onnx_qdq import QuantizedTensor
from edgevt.quant.rules import TargetRules
from edgevt.quant.table import CalibrationTable, TensorRange


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class _FakeQuant(torch.autograd.Function):
    """``(clamp(round(x / scale) + zero, qmin, qmax) - zero) * scale``, the target's arithmetic,
    with the straight-through gradients of PyTorch's learnable fake-quant (LSQ / LSQ+): an
    element is in range when its rounded value is; there x gets the gradient and scale
    ``round(u) - u``; a saturated element gives scale ``q - zero`` and zero ``-scale``.

    One pass instead of autograd's chain of temporaries: QAT steps spend most of their time
    here, and deciding "in range" on the rounded integer keeps it exact (composing ``x +
    (round(x) - x).detach()`` lands on either side of a bound by float error).
    """

    @staticmethod
    def forward(ctx, x, scale, zero, qmin: int, qmax: int):  # type: ignore[override]
        u = x / scale
        q = torch.round(u).add_(zero)
        if not any(ctx.needs_input_grad[:3]):  # evaluation (sensitivity, debug): no masks
            return q.clamp_(qmin, qmax).sub_(zero).mul_(scale)
        inside = (q >= qmin) & (q <= qmax)
        q = q.clamp_(qmin, qmax).sub_(zero)
        ctx.save_for_backward(inside, torch.where(inside, q - u, q), scale, zero)
        return q.mul_(scale)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        inside, dscale, scale, zero = ctx.saved_tensors
        grad_x = grad * inside
        grad_scale = grad_zero = None
        if ctx.needs_input_grad[1]:
            grad_scale = (grad * dscale).sum_to_size(scale.shape)
        if ctx.needs_input_grad[2]:
            grad_zero = -(scale * (grad - grad_x).sum_to_size(zero.shape))
        return grad_x, grad_scale, grad_zero, None, None


def fake_quant(
    x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int
) -> torch.Tensor:
    """Fake quantization with an integer-valued ``zero`` (broadcastable, like ``scale``)."""
    return _FakeQuant.apply(x, scale, zero, qmin, qmax)


def fake_quant_learnable(
    x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, signed: bool
) -> torch.Tensor:
    """``x`` quantized with the range [lo, hi] as the target derives scale and zero point
    (``activation_qparams``), differentiable in x, lo and hi."""
    if signed:
        scale = torch.maximum(-lo, hi).clamp_min(1e-8) / 127.0
        return fake_quant(x, scale, torch.zeros_like(scale), -127, 127)
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    scale = (hi - lo).clamp_min(1e-8) / 255.0
    zero = torch.clamp(_round_ste(-lo / scale), 0, 255)
    return fake_quant(x, scale, zero, 0, 255)


# The learned weight clip stays within [CLIP_MIN, 1] x max |w| (projected after each step):
# above 1 the exporter's max |w| would not be the clip; near 0 every weight would saturate.
CLIP_MIN = 0.05


class WeightFakeQuant(nn.Module):
    """Parametrization: symmetric int8 weights clipped at ``clip_scale`` x max |w| (per-tensor
    max |w| or each channel's), straight-through. The per-tensor clip is learnable (LSQ: the
    gradient reaches it through the rounding and the clipping); a per-channel max |w| already
    fits its channel, and learning those clips measured worse on Lite0 (Adam moves each by
    about the learning rate per step, whatever its gradient)."""

    def __init__(self, qmax: int, per_channel: bool) -> None:
        super().__init__()
        self.qmax, self.per_channel = qmax, per_channel
        self.clip_scale = nn.Parameter(torch.ones(1), requires_grad=not per_channel)

    enabled = True

    def step(self, w: torch.Tensor) -> float:
        """The int8 step of ``w`` (the median channel's when per-channel): the unit of
        ``--lr-unit step``."""
        return float(self.clip(w).flatten().median()) / self.qmax

    def clip(self, w: torch.Tensor) -> torch.Tensor:
        """The clipping threshold per output channel, shaped to broadcast against ``w``."""
        flat = w.detach().abs().reshape(w.shape[0], -1)
        amax = flat.amax(dim=1) if self.per_channel else flat.amax().expand(w.shape[0])
        return (amax * self.clip_scale).clamp_min(1e-12).reshape(-1, *([1] * (w.dim() - 1)))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return w
        scale = self.clip(w) / self.qmax
        return fake_quant(w, scale, torch.zeros_like(scale), -self.qmax, self.qmax)

    def exported(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` clipped at the threshold: its max |w| is the threshold, so the exporter's
        scale (max |w| / qmax) is the trained one and the int8 weights are identical."""
        if not self.enabled:
            return w.detach().clone()
        clip = self.clip(w).detach()
        return torch.maximum(torch.minimum(w.detach(), clip), -clip)


class _SharedQuantized(TorchFunctionMode):
    """Every later use of a tensor that was quantized for one op gets the quantized value, as
    in the exported graph, where one Q/DQ pair feeds all the tensor's consumers (the residual
    stream of a transformer block reaches the skip add through the DequantizeLinear that
    feeds the block's first Linear)."""

    def __init__(self, swap: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self.swap = swap

    def _sub(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            hit = self.swap.get(id(value))
            return hit[1] if hit is not None and hit[0] is value else value
        if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
            return type(value)(self._sub(v) for v in value)
        return value

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.swap:
            args = tuple(self._sub(a) for a in args)
            kwargs = {k: self._sub(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


class QuantSim(nn.Module):
    """The fused model running the target's int8 numerics, trainable.

    Args:
        model: the fused fp32 model (copied).
        tensors: what the exported QDQ graph quantizes (``onnx_qdq.quantized_tensors``).
        weight_ops: ``{op name: (qmax, per_channel)}`` for the Conv2d/Linear weights to quantize.
    """

    def __init__(
        self,
        model: nn.Module,
        tensors: list[QuantizedTensor],
        weight_ops: dict[str, tuple[int, bool]],
        signed: bool,
    ) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        self.signed = signed
        self.tensors = tensors
        self.group = {key: i for i, t in enumerate(tensors) for key in t.keys}
        self.returned = {t.producer_module: i for i, t in enumerate(tensors) if t.producer_module}
        self.register_buffer("init_lo", torch.tensor([t.min for t in tensors]))
        self.register_buffer("init_hi", torch.tensor([t.max for t in tensors]))
        self.lo_scale = nn.Parameter(torch.ones(len(tensors)))
        self.hi_scale = nn.Parameter(torch.ones(len(tensors)))
        self._key_on: dict[str, bool] = {}
        self._group_on: list[bool] = []
        self._done: dict[int, tuple[torch.Tensor, int]] = {}  # id -> (fake-quantized, group)
        self._swap: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (float, quantized)
        # Called with (table key, value as the op sees it) on each forward (edgevt debug).
        self.observe: Callable[[str, torch.Tensor], None] | None = None
        # An untouched copy to load trained weights into: parametrized classes cannot be
        # deep-copied and un-parametrized safely (the copies share the generated class).
        object.__setattr__(self, "_skeleton", copy.deepcopy(self.model))
        modules = dict(self.model.named_modules())
        self.weight_ops = dict(weight_ops)
        # The weight parametrizations by op name, kept as a plain dict (not submodules twice).
        quants: dict[str, WeightFakeQuant] = {}
        for name, (qmax, per_channel) in self.weight_ops.items():
            quants[name] = WeightFakeQuant(qmax, per_channel)
            parametrize.register_parametrization(modules[name], "weight", quants[name])
        object.__setattr__(self, "weight_quants", quants)
        self.ops = {op_of(k) for t in tensors for k in t.keys} | set(self.weight_ops)
        self.set_active(self.ops)

    @classmethod
    def for_export(
        cls,
        model: nn.Module,
        fp32_onnx: Any,
        table: CalibrationTable,
        config: QuantConfig,
        rules: TargetRules,
    ) -> QuantSim:
        """The simulation of what exporting ``fp32_onnx`` (path or proto) with ``table``,
        ``config`` and ``rules`` quantizes: the one constructor QAT, sensitivity and tests use."""
        import onnx

        from edgevt.quant.onnx_qdq import quantized_tensors

        proto = fp32_onnx if hasattr(fp32_onnx, "graph") else onnx.load(str(fp32_onnx))
        tensors = quantized_tensors(proto, table, config, rules)
        ops = weight_ops_for(table, config, rules, tensors, model)
        return cls(model, tensors, ops, rules.signed_activations)

    def set_active(self, ops: set[str] | list[str]) -> None:
        """Quantize only these ops (sensitivity analysis): an op's inputs and weights follow
        it; a tensor quantized at its producer (an int8 add) needs all its ops active, as
        the export then leaves the add in float."""
        active = set(ops)
        self._key_on = {k: op_of(k) in active for t in self.tensors for k in t.keys}
        self._group_on = [all(self._key_on[k] for k in t.keys) for t in self.tensors]
        for name, quant in self.weight_quants.items():
            quant.enabled = name in active

    def ranges(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.init_lo * self.lo_scale, self.init_hi * self.hi_scale

    def _quantize(self, key: str, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
        i = self.group.get(key)
        on = i is not None and (self._group_on[i] if key.endswith(":out") else self._key_on[key])
        return self._fake_quant(x, i, lo, hi) if on else x

    def _fake_quant(self, x: torch.Tensor, i: int, lo: torch.Tensor, hi: torch.Tensor):
        # A tensor quantized at its producer reaches its consumers already on the grid of the
        # same range: quantizing it again changes no value, so skip it (half the step's work).
        done = self._done.get(id(x))
        if done is not None and done[0] is x and done[1] == i:
            return x
        y = fake_quant_learnable(x, lo[i], hi[i], self.signed)
        self._done[id(y)] = (y, i)
        self._swap[id(x)] = (x, y)
        return y

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        lo, hi = self.ranges()

        def inputs(op: QuantOp, xs: list[torch.Tensor]) -> list[torch.Tensor]:
            out = [self._quantize(k, x, lo, hi) for k, x in zip(op.input_keys, xs, strict=True)]
            if self.observe is not None:
                for k, x in zip(op.input_keys, out, strict=True):
                    self.observe(k, x)
            return out

        def output(op: QuantOp, y: torch.Tensor) -> torch.Tensor:
            y = self._quantize(op.output_key, y, lo, hi)
            if self.observe is not None:
                self.observe(op.output_key, y)
            return y

        hooks = []
        for name, module in self.model.named_modules():
            if name in self.returned:
                i = self.returned[name]
                if not self._group_on[i]:
                    continue
                hooks.append(module.register_forward_hook(
                    lambda _m, _a, y, i=i: self._fake_quant(y, i, lo, hi)
                    if isinstance(y, torch.Tensor) else None
                ))  # fmt: skip
        self._done, self._swap = {}, {}
        try:
            with _SharedQuantized(self._swap), OpTracer(
                self.model, rewrite=inputs, rewrite_output=output
            ):
                return self.model(images)
        finally:
            self._done, self._swap = {}, {}
            for h in hooks:
                h.remove()

    def quantize_key(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """``x`` as the simulation quantizes the tensor at table key ``key`` (unchanged where
        that key is not quantized)."""
        lo, hi = self.ranges()
        try:
            with torch.no_grad():
                return self._quantize(key, x, lo, hi)
        finally:
            self._done, self._swap = {}, {}

    def float_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not _is_multiplier(n)]

    def weight_param_groups(self, lr: float, unit: str) -> list[dict[str, Any]]:
        """Adam groups of the float parameters. ``unit`` "absolute": one ``lr`` for all.
        "step": each tensor's ``lr`` is in units of its int8 step (a quantized weight's as
        the target quantizes it, else max |p| / 127): folded weights span 200x in scale here,
        and Adam moves every element by about its lr whatever its gradient, so one absolute
        rate leaves the widest tensors (a per-tensor ``conv_stem``: 0.27 a step) unmoved
        while it moves the finest by whole steps."""
        params = self.float_parameters()
        if unit == "absolute":
            return [{"params": params, "lr": lr, "base_lr": lr}]
        if unit != "step":
            raise ValueError(f"unknown learning-rate unit {unit!r}")
        modules = dict(self.model.named_modules())
        steps = {}
        for name, quant in self.weight_quants.items():
            original = modules[name].parametrizations.weight.original
            steps[id(original)] = quant.step(original.detach())
        groups = []
        for p in params:
            step = steps.get(id(p), float(p.detach().abs().max()) / 127)
            rate = lr * max(step, 1e-12)
            groups.append({"params": [p], "lr": rate, "base_lr": rate})
        return groups

    def clip_parameters(self) -> list[nn.Parameter]:
        """The learned weight clips (multipliers of max |w|): per-tensor weights only."""
        return [q.clip_scale for q in self.weight_quants.values() if not q.per_channel]

    def project(self) -> None:
        """Keep each weight clip within [CLIP_MIN, 1] x max |w| (after an optimizer step)."""
        with torch.no_grad():
            for clip in self.clip_parameters():
                clip.clamp_(CLIP_MIN, 1.0)

    def export_model(self) -> nn.Module:
        """A plain copy of the trained float model (no parametrizations) for every exporter,
        its weights clipped at the learned thresholds."""
        suffix = ".parametrizations.weight.original"
        state = {}
        for key, value in self.model.state_dict().items():
            if key.endswith(suffix):
                name = key[: -len(suffix)]
                state[name + ".weight"] = self.weight_quants[name].exported(value)
            elif ".parametrizations.weight." not in key:
                state[key] = value.detach().clone()
        model = copy.deepcopy(self._skeleton)
        model.load_state_dict(state)
        return model.eval()

    def learned_table(
        self, base: CalibrationTable, extra_source: dict[str, Any]
    ) -> CalibrationTable:
        """``base`` with the learned ranges and the trained weights' max |w|."""
        lo, hi = (t.detach().cpu() for t in self.ranges())
        table = copy.deepcopy(base)
        for i, tensor in enumerate(self.tensors):
            for key in tensor.keys:
                old = base.activations.get(key)
                table.activations[key] = TensorRange(
                    float(lo[i]),
                    float(hi[i]),
                    old.observed_min if old else None,
                    old.observed_max if old else None,
                )
        modules = dict(self.export_model().named_modules())
        for name in table.weight_amax:
            if name in modules:
                table.weight_amax[name] = [round(float(v), 8) for v in weight_amax(modules[name])]
        table.source = {**base.source, "qat": extra_source}
        return table


def _is_multiplier(name: str) -> bool:
    """Activation ranges and weight clips: trained at their own rates, not as weights."""
    return name in ("lo_scale", "hi_scale") or name.endswith(".clip_scale")


def op_of(key: str) -> str:
    """``blocks.0.conv:in0`` -> ``blocks.0.conv``."""
    return key.rsplit(":", 1)[0]


def weight_ops_for(
    table: CalibrationTable,
    config: QuantConfig,
    rules: TargetRules,
    tensors: list[QuantizedTensor],
    model: nn.Module,
) -> dict[str, tuple[int, bool]]:
    """The Conv2d/Linear ops whose weights the export quantizes: those whose input it does."""
    keys = {k for t in tensors for k in t.keys}
    modules = dict(model.named_modules())
    out = {}
    for name, op_type in table.ops.items():
        setting = config.resolve(name, op_type)
        if op_type == "matmul" or setting is None or f"{name}:in0" not in keys:
            continue
        depthwise = getattr(modules[name], "groups", 1) > 1
        out[name] = (rules.weight_qmax(depthwise), setting.weights == "per_channel")
    return out


def activation_qparams(lo: float, hi: float, signed: bool) -> tuple[float, int, int, int]:
    """(scale, zero point, qmin, qmax) as ONNX Runtime's quantizer derives them."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if signed:
        amax = max(-lo, hi, 1e-12)
        return amax / 127.0, 0, -127, 127
    scale = max(hi - lo, 1e-12) / 255.0
    return scale, int(round(-lo / scale)), 0, 255


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
        ops = table.ops
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
            signed = self.rules.signed_activations
            scale, zero, qmin, qmax = activation_qparams(r.min, r.max, signed)
            out.append(fake_quant(x, torch.tensor(scale), torch.tensor(float(zero)), qmin, qmax))
        return out

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with OpTracer(self.model, rewrite=self._rewrite):
            return self.model(images)
