"""Quantization-aware training as a pipeline stage (``edgevt qat``): load, fuse, simulate the
target's int8 rules from the PTQ table, distil from fp32, write ``fused.pt`` and the learned
table. The training itself is ``edgevt.quant.qat``."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgevt.data.imagenet import no_images_message, open_dataset
from edgevt.errors import EdgevtError
from edgevt.fused import FUSED_FILE, fuse, model_info, model_inputs, save_fused
from edgevt.io import sha256, write_json
from edgevt.progress import step
from edgevt.quant.calibrate import quantized_keys
from edgevt.quant.config import QuantConfig
from edgevt.quant.rules import TargetRules
from edgevt.quant.table import CalibrationTable
from edgevt.run import RunDir, undo_on_error
from edgevt.targets import DEFAULT_TARGET, all_targets


def _rules(target: str) -> TargetRules:
    """The int8 rules of ``target`` that QAT trains through."""
    simulated = {n: t for n, t in all_targets().items() if t.quantization_rules() is not None}
    if target not in simulated:
        raise EdgevtError(
            f"--target {target!r}: QAT simulates the int8 rules of {', '.join(simulated)}; its "
            "result then exports to every target."
        )
    return simulated[target].quantization_rules()


QAT_CHECKPOINT = "qat_checkpoint.pt"
# Below this cosine to the starting model, QAT has diverged (the export guard's floor).
DIVERGED_COSINE = 0.9


@dataclass
class QatOutcome:
    model: Path  # fused.pt of the trained model
    table: Path  # its CalibrationTable
    run_dir: RunDir
    steps: int
    summary: dict[str, Any]


def qat(
    model: str,
    checkpoint: str | Path | None = None,
    *,
    data: str | Path,
    calib_table: str | Path,
    out: str | Path,
    pretrained: bool = False,
    target: str = DEFAULT_TARGET,
    quant_config: str | Path | None = None,
    steps: int | None = None,
    epochs: float | None = None,
    batch: int = 16,
    lr: float = 5e-6,
    lr_unit: str = "absolute",
    range_lr: float = 1e-4,
    clip_lr: float = 3e-2,
    temperature: float = 1.0,
    crop_scale: float = 1.0,
    images: int = 1000,
    save_every: int = 25,
    restart: bool = False,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
    on_step=None,
) -> QatOutcome:
    """Quantization-aware training from the PTQ result (``calib_table``), distilled from fp32.

    Writes into ``out``: ``fused.pt`` (the trained model, for ``--checkpoint``),
    ``calibration.json`` (the learned ranges, for ``--calib-table``), ``quant_config.json``,
    ``qat.json`` (settings and loss curve) and ``qat_checkpoint.pt`` (resumed when the same
    command runs again after an interruption; ``restart`` discards it).

    Args:
        target: whose int8 rules the training simulates (any target with quantization rules,
            ``edgevt targets``); train for the one you ship to. It exports to every target.
        steps / epochs: training length (default: 300 steps).
        lr / range_lr / clip_lr: Adam rates of the weights, activation ranges and weight clips
            (the last two relative: 1e-4 moves a range by at most about 0.01 % per step).
        lr_unit: ``absolute``, or ``step``: ``lr`` in units of each tensor's int8 step.
        crop_scale: below 1, train on random-resized crops of at least this fraction.
        images: how many images of ``data`` to train on (held in memory, preprocessed once).
        device: ``cuda`` / ``cpu``; None picks the GPU when there is one.
    """
    from edgevt.quant.qat import QatSettings, train

    rules = _rules(target)
    _check_settings(steps, epochs, batch, images, save_every, crop_scale, lr_unit,
                    (lr, range_lr, clip_lr, temperature))  # fmt: skip
    device = _device(device)
    table, config, dataset = _inputs(model, calib_table, quant_config, data, images)
    n_steps = steps or (math.ceil(epochs * len(dataset) / batch) if epochs else 300)
    # a refused run leaves nothing it made, but the checkpoint to resume from
    with undo_on_error(out, keep=(QAT_CHECKPOINT,)):
        run = RunDir(out)
        with run.locked():  # one writer; a resumed run finds only whole files
            fused = fuse(model, checkpoint, pretrained=pretrained, seed=seed)
            loaded = fused.loaded
            table.check_for(model, quantized_keys(fused.model, loaded.entry.preprocess))
            sim = _simulation(fused, table, config, rules, progress)
            if lr_unit == "absolute" and progress:
                _advise_step_unit(sim)
            x, teacher = _qat_data(
                fused.model, dataset, loaded.entry.preprocess, progress, logits=crop_scale >= 1.0
            )
            settings = QatSettings(
                n_steps, batch, lr, lr_unit, range_lr, clip_lr, temperature, crop_scale, seed,
                str(data), len(dataset), sha256(calib_table), target,
            )  # fmt: skip
            ckpt = run / QAT_CHECKPOINT
            if restart:
                ckpt.unlink(missing_ok=True)
            start = time.perf_counter()
            state = train(
                sim, x, teacher, settings, ckpt, save_every=save_every, device=device,
                progress=progress, on_step=on_step, teacher=fused.model,
            )  # fmt: skip
            summary = _summary(state, sim, time.perf_counter() - start, device)
            model_path = _save(run, sim, table, config, settings, state, summary, fused.loaded,
                               f"QAT ({n_steps} steps on {Path(data).name}) of {loaded.weights}",
                               calib_table, (fused.model, x[:8]))  # fmt: skip
            return QatOutcome(model_path, run / "calibration.json", run, state.step, summary)


def _save(run: RunDir, sim, table: CalibrationTable, config: QuantConfig, settings, state,
          summary: dict[str, Any], loaded, weights: str, calib_table: str | Path,
          reference: tuple[nn.Module, torch.Tensor]) -> Path:
    """fused.pt of the trained model, its learned table, the config and the log; recorded."""
    trained = sim.cpu().export_model()
    cosine = _cosine_to_start(trained, *reference)
    if not all(torch.isfinite(t).all() for t in trained.state_dict().values()) or not (
        cosine >= DIVERGED_COSINE  # NaN compares False
    ):
        (run / QAT_CHECKPOINT).unlink(missing_ok=True)  # resuming it would diverge again
        raise EdgevtError(
            f"QAT diverged: after {state.step} steps the trained weights hold NaN or inf, or "
            f"their logits left the fp32 model's (cosine {cosine:.3f} < {DIVERGED_COSINE}), so "
            "nothing was saved — lower --lr (or --range-lr / --clip-lr) and run again."
        )
    model_path = save_fused(run / FUSED_FILE, loaded.entry.name, weights, trained)
    learned = sim.learned_table(table, {**settings.to_dict(), "base_method": table.method})
    learned.weights = weights
    learned.save(run / "calibration.json")
    write_json(run / "quant_config.json", config.to_dict())
    write_json(run / "qat.json", {"settings": settings.to_dict(), "summary": summary,
                                  "history": state.history})  # fmt: skip
    run.record(
        "qat",
        {**model_inputs(loaded), "calibration_table": str(calib_table)},
        settings.to_dict(),
        {"model": model_path, "calibration": run / "calibration.json", "log": run / "qat.json"},
        summary,
    )
    return model_path


def _inputs(model: str, calib_table, quant_config, data, images: int):
    """The PTQ table, the config and the training images, each checked before any work."""
    table = CalibrationTable.load(calib_table)
    table.check_for(model)
    config = QuantConfig.load(quant_config) if quant_config else QuantConfig()
    dataset = open_dataset(_image_folder(data), require_labels=False).subset(images)
    if len(dataset) == 0:
        raise EdgevtError(f"{data} holds no images (.jpg/.jpeg/.png...) to train on.")
    return table, config, dataset


def _advise_step_unit(sim) -> None:
    per_tensor = [n for n, (_, per_channel) in sim.weight_ops.items() if not per_channel]
    if per_tensor:
        # Measured on Lite0 (docs/qat.md): 36 % of the per-tensor PTQ loss recovered, 66-86 %
        # with --lr-unit step.
        print(
            f"note: {len(per_tensor)} weight tensors are per-tensor, whose int8 steps one "
            "absolute --lr barely moves; consider --lr-unit step --lr 3e-3",
            file=sys.stderr,
        )


def _check_settings(
    steps: int | None,
    epochs: float | None,
    batch: int,
    images: int,
    save_every: int,
    crop_scale: float,
    lr_unit: str,
    rates: tuple[float, float, float, float],
) -> None:
    if steps is not None and epochs is not None:
        raise EdgevtError("pass --steps or --epochs, not both.")
    for name, value in (("--batch", batch), ("--images", images), ("--save-every", save_every)):
        if value < 1:
            raise EdgevtError(f"{name} must be at least 1.")
    if (steps is not None and steps < 1) or (epochs is not None and epochs <= 0):
        raise EdgevtError("--steps / --epochs must be positive.")
    if not 0.05 <= crop_scale <= 1.0:
        raise EdgevtError("--crop-scale must be between 0.05 and 1 (1: no crops).")
    if lr_unit not in ("absolute", "step"):
        raise EdgevtError(f"--lr-unit {lr_unit!r}: use absolute or step.")
    lr, range_lr, clip_lr, temperature = rates
    if not all(math.isfinite(r) for r in rates):
        raise EdgevtError(
            "--lr, --range-lr, --clip-lr and --temperature must be finite numbers (not nan/inf)."
        )
    if epochs is not None and not math.isfinite(epochs):
        raise EdgevtError("--epochs must be a finite number.")
    if lr <= 0 or range_lr < 0 or clip_lr < 0 or temperature <= 0:
        raise EdgevtError(
            "--lr and --temperature must be positive, --range-lr and --clip-lr not negative."
        )


def _device(device: str | None) -> str:
    """``cuda`` when asked for (or None and a GPU is here), else ``cpu``; checked now, not
    after the model is loaded."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise EdgevtError(f"--device {device!r}: use cpu or cuda (cuda:N for one GPU).")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EdgevtError(f"--device {device}: no CUDA GPU is visible here; use --device cpu.")
    return device


def _simulation(fused, table: CalibrationTable, config: QuantConfig, rules, progress: bool):
    """The QuantSim of exactly the tensors the target's int8 graph quantizes."""
    import tempfile

    from edgevt.quant.simulate import QuantSim
    from edgevt.targets.onnx import export_onnx

    info = model_info(fused.loaded, DEFAULT_TARGET, True)
    with step("finding what the int8 graph quantizes", progress), tempfile.TemporaryDirectory(
    ) as tmp:  # fmt: skip
        fp32 = export_onnx(fused.model, info, Path(tmp) / "m.onnx")
        return QuantSim.for_export(fused.model, fp32, table, config, rules)


def _summary(state, sim, seconds: float, device: str) -> dict[str, Any]:
    hist = state.history
    tail = hist[-min(len(hist), 25) :]
    return {
        "steps": state.step,
        "quantized_tensors": len(sim.tensors),
        "quantized_weights": len(sim.weight_ops),
        "loss_first": hist[0]["loss"] if hist else None,
        "loss_last25": sum(h["loss"] for h in tail) / max(len(tail), 1),
        "agreement_last25": sum(h["agreement"] for h in tail) / max(len(tail), 1),
        "seconds_this_run": round(seconds, 1),
        "device": device,
    }


def _image_folder(data: str | Path) -> Path:
    path = Path(data)
    if not path.is_dir():
        raise EdgevtError(no_images_message("--data", data))
    return path


def _cosine_to_start(trained: nn.Module, start: nn.Module, images: torch.Tensor) -> float:
    """Mean cosine of the trained float model's logits to the model QAT started from: finite
    weights can still be garbage (an absurd --lr), which only the next export would notice."""
    with torch.no_grad():
        a, b = trained.eval()(images).double(), start.eval()(images).double()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1).mean())


def _qat_data(model: nn.Module, dataset, preprocess, progress: bool, logits: bool = True):
    """All training images in memory, and the fp32 teacher's logits for them and their mirror
    (not needed when training on crops: the teacher scores each crop)."""
    from tqdm import tqdm

    chunks = [torch.from_numpy(b) for b, _ in dataset.batches(preprocess, 64)]
    images = torch.cat(chunks)
    if not logits:
        return images, None
    logits = []
    with torch.no_grad(), tqdm(total=2 * len(images), desc="teacher", unit="img",
                               disable=not progress) as bar:  # fmt: skip
        for mirrored in (False, True):
            out = []
            for part in images.split(64):
                out.append(model(part.flip(-1) if mirrored else part))
                bar.update(len(part))
            logits.append(torch.cat(out))
    return images, torch.stack(logits)
