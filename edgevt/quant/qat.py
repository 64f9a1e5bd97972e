"""Quantization-aware training: fine-tune the fused model through the int8 numerics it ships with.

* Start = PTQ. ``QuantSim`` quantizes exactly the tensors the exported QDQ graph quantizes
  (found by building that graph, ``onnx_qdq.quantized_tensors``), with the ranges of the
  CalibrationTable, so step 0 reproduces the PTQ artifact.
* Weights: per-channel (or per-tensor) symmetric fake quantization with the straight-through
  estimator. A per-tensor clipping threshold is learnable (LSQ-style), as a multiplier <= 1
  of max |w|: it can give up a few outlier channels to resolve the rest (per-channel scales
  stay at max |w|, which already fits each channel). Every exporter
  derives the scale from max |w|, so the export clips the weights at the learned threshold:
  max |w| then is the threshold, and the trained weights export with no extra state.
* Activations: learnable ranges (LSQ+-style: the gradient reaches min and max through the
  rounding and clipping). They are stored as multipliers of the calibrated range, so one
  learning rate suits tensors whose ranges differ by orders of magnitude. The learned ranges
  are written back into a CalibrationTable, which every target then honours as it does PTQ's.
* Loss: distillation from the fp32 model (KL on the logits); labels are not needed.
* The model stays in eval mode: BatchNorm is folded (nothing to update) and dropout or
  drop-path would only add noise to a short fine-tune.
* Determinism: the batch of step ``i`` depends only on (seed, i) and the optimizer state is
  checkpointed, so a resumed run ends where an uninterrupted one does.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from edgevt.errors import EdgevtError
from edgevt.io import atomic_path
from edgevt.quant.calibrate import OpTracer, QuantOp, weight_amax
from edgevt.quant.config import QuantConfig
from edgevt.quant.onnx_qdq import QuantizedTensor
from edgevt.quant.rules import TargetRules
from edgevt.quant.table import CalibrationTable, TensorRange

CHECKPOINT_FORMAT = "edgevt.qat-checkpoint/3"  # 2: learnable weight clips; 3: exact STE bounds


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
    (``fakequant.activation_qparams``), differentiable in x, lo and hi."""
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
        return y

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        lo, hi = self.ranges()

        def inputs(op: QuantOp, xs: list[torch.Tensor]) -> list[torch.Tensor]:
            return [self._quantize(k, x, lo, hi) for k, x in zip(op.input_keys, xs, strict=True)]

        def output(op: QuantOp, y: torch.Tensor) -> torch.Tensor:
            return self._quantize(op.output_key, y, lo, hi)

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
        self._done = {}
        try:
            with OpTracer(self.model, rewrite=inputs, rewrite_output=output):
                return self.model(images)
        finally:
            self._done = {}
            for h in hooks:
                h.remove()

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
    for name, op_type in table.source.get("ops", {}).items():
        setting = config.resolve(name, op_type)
        if op_type == "matmul" or setting is None or f"{name}:in0" not in keys:
            continue
        depthwise = getattr(modules[name], "groups", 1) > 1
        out[name] = (rules.weight_qmax(depthwise), setting.weights == "per_channel")
    return out


@dataclass(frozen=True)
class QatSettings:
    """Everything that decides a run's result; a checkpoint resumes only under the same."""

    steps: int
    batch: int
    lr: float
    lr_unit: str  # "absolute", or "step": each tensor's lr in units of its int8 step
    range_lr: float
    clip_lr: float
    temperature: float
    crop_scale: float  # random-resized crops of at least this area fraction; 1: none
    seed: int
    data: str
    images: int
    table_sha256: str
    target: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class QatState:
    step: int
    history: list[dict[str, float]]


def learning_rate(base: float, step: int, steps: int) -> float:
    """Cosine decay from ``base`` to 0; a function of the step, so resuming repeats it."""
    return base * 0.5 * (1.0 + math.cos(math.pi * step / max(steps, 1)))


def batch_indices(n: int, batch: int, step: int, seed: int) -> torch.Tensor:
    """Images of ``step``: epochs are seeded permutations, so (seed, step) fixes the batch."""
    start = step * batch
    epoch, offset = divmod(start, n)
    out = []
    while len(out) < batch:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=gen).tolist()
        out.extend(perm[offset : offset + batch - len(out)])
        epoch, offset = epoch + 1, 0
    return torch.tensor(out)


def flips(indices: torch.Tensor, step: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed * 7_919 + step)
    return torch.rand(len(indices), generator=gen) < 0.5


def random_crops(x: torch.Tensor, step: int, seed: int, min_scale: float) -> torch.Tensor:
    """Random-resized crops of ``x`` (N, 3, H, W) back to H x W: area fraction in
    [min_scale, 1], aspect ratio in [3/4, 4/3], bilinear; fixed by (seed, step) like the batch.
    More views of few images, so the student matches the teacher beyond the training set."""
    n = len(x)
    gen = torch.Generator().manual_seed(seed * 104_729 + step)
    area = min_scale + (1 - min_scale) * torch.rand(n, generator=gen)
    log_ratio = (torch.rand(n, generator=gen) * 2 - 1) * math.log(4 / 3)
    ratio = torch.exp(log_ratio)
    width = torch.sqrt(area * ratio).clamp(max=1.0)
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    # Crop centres keep the crop inside the image (affine_grid's [-1, 1] coordinates).
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - width)
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - height)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = width, cx
    theta[:, 1, 1], theta[:, 1, 2] = height, cy
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened logits, scaled by t² (Hinton et al.)."""
    return F.kl_div(
        F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), log_target=True,
        reduction="batchmean",
    ) * (t * t)  # fmt: skip


def train(
    sim: QuantSim,
    images: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    settings: QatSettings,
    checkpoint: Path,
    *,
    save_every: int = 50,
    device: str = "cpu",
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    teacher: nn.Module | None = None,
) -> QatState:
    """Fine-tune ``sim`` for ``settings.steps`` steps, checkpointing every ``save_every``.

    ``images`` (N, 3, H, W) and ``teacher_logits`` (2, N, classes: plain and mirrored) live on
    the CPU; only the batch moves to ``device``. A checkpoint of the same settings is resumed.
    With ``settings.crop_scale`` < 1 the batch is cropped and ``teacher`` (the fp32 model)
    scores each crop instead.
    """
    from tqdm import tqdm

    crops = settings.crop_scale < 1.0
    if crops and teacher is None:
        raise ValueError("crop augmentation needs the teacher model")
    sim.to(device)
    if crops:
        teacher = teacher.to(device).eval()
    optimizer = torch.optim.Adam(
        [
            *sim.weight_param_groups(settings.lr, settings.lr_unit),
            {"params": [sim.lo_scale, sim.hi_scale], "lr": settings.range_lr,
             "base_lr": settings.range_lr},
            {"params": sim.clip_parameters(), "lr": settings.clip_lr,
             "base_lr": settings.clip_lr},
        ]
    )  # fmt: skip
    state = QatState(0, [])
    if checkpoint.is_file():
        state = _resume(checkpoint, sim, optimizer, settings)
    agree_ema = None
    bar = tqdm(total=settings.steps, initial=state.step, desc="qat", unit="step",
               disable=not progress)  # fmt: skip
    try:
        while state.step < settings.steps:
            step = state.step
            idx = batch_indices(len(images), settings.batch, step, settings.seed)
            flip = flips(idx, step, settings.seed)
            x = images[idx]
            x[flip] = x[flip].flip(-1)
            if crops:
                x = random_crops(x, step, settings.seed, settings.crop_scale)
                with torch.no_grad():
                    target = teacher(x.to(device))
            else:
                target = teacher_logits[flip.long(), idx]
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(group["base_lr"], step, settings.steps)
            logits = sim(x.to(device))
            loss = distillation_loss(logits, target.to(device), settings.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sim.project()
            loss_value = loss.item()
            agree = float((logits.detach().argmax(1).cpu() == target.argmax(1)).float().mean())
            agree_ema = agree if agree_ema is None else 0.9 * agree_ema + 0.1 * agree
            state.step += 1
            state.history.append({"step": state.step, "loss": loss_value, "agreement": agree})
            bar.update()
            bar.set_postfix(loss=f"{loss_value:.4f}", agree=f"{agree_ema:.3f}")
            if state.step % save_every == 0 or state.step == settings.steps:
                _save(checkpoint, sim, optimizer, settings, state)
            if on_step is not None:
                on_step(state.step)
    finally:
        bar.close()
    return state


def _save(path: Path, sim: QuantSim, optimizer, settings: QatSettings, state: QatState) -> None:
    with atomic_path(path) as tmp:
        torch.save(
            {
                "format": CHECKPOINT_FORMAT,
                "settings": settings.to_dict(),
                "step": state.step,
                "history": state.history,
                "sim": sim.state_dict(),
                "optimizer": optimizer.state_dict(),
            },
            tmp,
        )


def _resume(path: Path, sim: QuantSim, optimizer, settings: QatSettings) -> QatState:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EdgevtError(
            f"cannot read the QAT checkpoint {path} ({exc}); delete it or pass --restart."
        ) from exc
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        raise EdgevtError(f"{path} is not an edgevt QAT checkpoint; delete it or pass --restart.")
    if saved["settings"] != settings.to_dict():
        changed = sorted(k for k, v in settings.to_dict().items() if saved["settings"].get(k) != v)
        raise EdgevtError(
            f"{path} holds a QAT run with other settings ({', '.join(changed)} differ); pass "
            "--restart to start over, or -o another run directory."
        )
    sim.load_state_dict(saved["sim"])
    optimizer.load_state_dict(saved["optimizer"])
    return QatState(int(saved["step"]), list(saved["history"]))
