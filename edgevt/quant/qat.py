"""Quantization-aware training: fine-tune the fused model through the int8 numerics it ships with.

* Start = PTQ. ``QuantSim`` (``edgevt.quant.simulate``) quantizes exactly the tensors the
  exported QDQ graph quantizes (found by building that graph,
  ``onnx_qdq.quantized_tensors``), with the CalibrationTable's ranges: step 0 is PTQ.
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

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgevt.errors import EdgevtError
from edgevt.io import atomic_path
from edgevt.quant.simulate import (  # noqa: F401  (re-exported: QAT's public names)
    QuantSim,
    fake_quant,
    fake_quant_learnable,
)

CHECKPOINT_FORMAT = "edgevt.qat-checkpoint/3"  # 2: learnable weight clips; 3: exact STE bounds


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
    if not isinstance(saved.get("settings"), dict):
        raise EdgevtError(f"{path} is a damaged QAT checkpoint (no settings); pass --restart.")
    if saved["settings"] != settings.to_dict():
        changed = sorted(k for k, v in settings.to_dict().items() if saved["settings"].get(k) != v)
        raise EdgevtError(
            f"{path} holds a QAT run with other settings ({', '.join(changed)} differ); pass "
            "--restart to start over, or -o another run directory."
        )
    try:
        sim.load_state_dict(saved["sim"])
        optimizer.load_state_dict(saved["optimizer"])
        return QatState(int(saved["step"]), list(saved["history"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise EdgevtError(
            f"{path} is a damaged QAT checkpoint ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:150]}) — pass --restart to start over."
        ) from None
