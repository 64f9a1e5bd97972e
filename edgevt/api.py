"""The Python API: every CLI command is one of these functions.

>>> import edgevt
>>> out = edgevt.export("efficientnet_lite0", pretrained=True, out="runs/lite0")
>>> edgevt.evaluate(out.artifact, data="../shared/data/imagenet-val1000").top1
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgevt.artifact import ArtifactInfo
from edgevt.data.imagenet import default_data_root, imagenet_synsets, open_dataset, sample_batch
from edgevt.errors import EdgevtError
from edgevt.fuse import FuseReport, fuse_model, fused_skeleton
from edgevt.io import atomic_path, sha256, write_json
from edgevt.models import LoadedModel, get_entry, load_model
from edgevt.run import RunDir
from edgevt.targets import get_target, target_for_artifact
from edgevt.targets.base import Runner
from edgevt.validate.evaluate import EvalResult, compare_logits
from edgevt.validate.evaluate import evaluate as _evaluate

FUSED_FILE = "fused.pt"


def default_calibration_dir() -> Path:
    """Where fusion checks and calibration take images from by default."""
    return default_data_root() / "imagenet-sample1000"


def check_images(
    preprocess, data: str | Path | None = None, n: int = 8
) -> tuple[torch.Tensor, str]:
    """Real images to check numerics on: from ``data``, else the shipped calibration folder,
    else (saying so) seeded random inputs."""
    images, described = sample_batch(preprocess, data or default_calibration_dir(), n)
    if images is None:
        if data is not None:
            raise EdgevtError(f"--data {data} is not a folder of images.")
        gen = torch.Generator().manual_seed(0)
        size = preprocess.input_size
        return torch.randn(n, 3, size, size, generator=gen), f"{n} random inputs ({described})"
    return torch.from_numpy(images), described


@dataclass
class FuseOutcome:
    model: nn.Module
    report: FuseReport
    loaded: LoadedModel
    run_dir: RunDir | None = None


def _model_inputs(loaded: LoadedModel) -> dict[str, Any]:
    inputs: dict[str, Any] = {"model": loaded.entry.name, "weights": loaded.weights}
    if loaded.checkpoint is not None:
        inputs["checkpoint"] = str(loaded.checkpoint)
        inputs["checkpoint_sha256"] = sha256(loaded.checkpoint)
    return inputs


def _info(loaded: LoadedModel, target: str, fused: bool) -> ArtifactInfo:
    return ArtifactInfo(
        model=loaded.entry.name,
        preprocess=loaded.entry.preprocess,
        classes=imagenet_synsets(),
        target=target,
        precision="fp32",
        weights=loaded.weights,
        extra={"fused": fused},
    )


def fuse(
    model: str,
    checkpoint: str | Path | None = None,
    *,
    pretrained: bool = False,
    data: str | Path | None = None,
    out: str | Path | None = None,
    seed: int = 0,
) -> FuseOutcome:
    """Load a zoo model, apply and verify its fusion rewrites, optionally save ``fused.pt``.

    Args:
        data: image folder the numerics are verified on; None means the shipped calibration
            images (``$EDGEVT_DATA/imagenet-sample1000``), or random inputs if absent.
        out: run directory to write ``fused.pt``, ``fuse.json`` and the manifest into.
    """
    loaded = load_model(model, checkpoint, pretrained=pretrained, seed=seed)
    images, described = check_images(loaded.entry.preprocess, data)
    fused, report = fuse_model(loaded.model, loaded.entry.family, images, described)
    run = None
    if out is not None:
        run = RunDir(out)
        with atomic_path(run / FUSED_FILE) as tmp:
            torch.save(
                {
                    "edgevt_fused": loaded.entry.name,
                    "weights": loaded.weights,
                    "state_dict": fused.state_dict(),
                },
                tmp,
            )
        write_json(run / "fuse.json", report.to_dict())
        run.record(
            "fuse",
            _model_inputs(loaded),
            {"verify_inputs": described},
            {"fused": run / FUSED_FILE, "report": run / "fuse.json"},
            report.to_dict(),
        )
    return FuseOutcome(fused, report, loaded, run)


def load_fused(path: str | Path) -> tuple[nn.Module, ArtifactInfo]:
    """Rebuild a model saved by ``edgevt fuse`` (``fused.pt``)."""
    path = Path(path)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EdgevtError(f"cannot read {path} as an edgevt fused model: {exc}") from exc
    if not isinstance(saved, dict) or "edgevt_fused" not in saved:
        raise EdgevtError(f"{path} is not an edgevt fused model (written by `edgevt fuse`).")
    entry = get_entry(saved["edgevt_fused"])
    skeleton = fused_skeleton(entry.build(), entry.family, entry.preprocess.input_size)
    skeleton.load_state_dict(saved["state_dict"])
    info = ArtifactInfo(
        entry.name,
        entry.preprocess,
        imagenet_synsets(),
        target="pytorch",
        weights=saved.get("weights", ""),
        extra={"fused": True},
    )
    return skeleton.eval(), info


@dataclass
class ExportOutcome:
    artifact: Path
    run_dir: RunDir
    fuse_report: FuseReport
    check: dict[str, float]
    weights: str
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)


def export(
    model: str,
    target: str = "onnx",
    checkpoint: str | Path | None = None,
    *,
    pretrained: bool = False,
    out: str | Path | None = None,
    opset: int = 17,
    data: str | Path | None = None,
    eval_data: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> ExportOutcome:
    """Fuse, export to ``target`` and check the artifact against the fused PyTorch model.

    Args:
        out: run directory; None means ``runs/<model>``.
        data: images for the fusion and export checks (see ``fuse``).
        eval_data: labelled images; if given, top-1/top-5 of the fp32 PyTorch reference and of
            the artifact are measured and written to ``eval.json``.
        limit: evaluate on at most this many images.
    """
    spec = get_target(target)
    run = RunDir(out or Path("runs") / model)
    fused = fuse(model, checkpoint, pretrained=pretrained, data=data, out=run.path, seed=seed)
    loaded = fused.loaded
    artifact = run / f"model{spec.suffix}"
    from edgevt.targets.onnx import OnnxRuntimeRunner, export_onnx

    export_onnx(fused.model, _info(loaded, target, fused=True), artifact, opset=opset)
    images, described = check_images(loaded.entry.preprocess, data)
    with torch.no_grad():
        reference = fused.model(images).numpy()
    with OnnxRuntimeRunner(artifact) as runner:
        check = compare_logits(reference, runner.infer(images.numpy()))
    run.record(
        "export",
        _model_inputs(loaded),
        {"target": target, "opset": opset, "check_inputs": described},
        {"model": artifact},
        check,
    )
    outcome = ExportOutcome(artifact, run, fused.report, check, loaded.weights)
    if eval_data is not None:
        outcome.evals = evaluate_against_reference(loaded, artifact, eval_data, limit, progress)
        write_json(run / "eval.json", outcome.evals)
        run.record(
            "eval",
            {**_model_inputs(loaded), "data": str(eval_data), "limit": limit},
            artifacts={"eval": run / "eval.json"},
            results=outcome.evals,
        )
    return outcome


def evaluate_against_reference(
    loaded: LoadedModel, artifact: Path, data: str | Path, limit: int | None, progress: bool
) -> dict[str, dict[str, Any]]:
    """Top-1/top-5 of the unfused fp32 PyTorch model and of ``artifact``, and their agreement."""
    dataset = open_dataset(data).subset(limit)
    from edgevt.targets.pytorch import TorchRunner

    ref = _evaluate(
        TorchRunner(loaded.model, _info(loaded, "pytorch", False)), dataset, progress=progress
    )
    art = _evaluate(open_runner(artifact), dataset, progress=progress)
    return {
        "pytorch_fp32": ref.to_dict(),
        artifact.name: {**art.to_dict(), "vs_pytorch_fp32": compare_logits(ref.logits, art.logits)},
    }


def open_runner(
    model_or_artifact: str | Path,
    checkpoint: str | Path | None = None,
    *,
    pretrained: bool = False,
    threads: int | None = None,
    fused: bool = False,
    seed: int = 0,
) -> Runner:
    """A runner for an artifact path (by suffix), a ``fused.pt``, or a zoo model name."""
    from edgevt.targets.pytorch import TorchRunner

    path = Path(model_or_artifact)
    if path.exists() and path.is_file():
        if checkpoint is not None or pretrained:
            raise EdgevtError("--checkpoint/--pretrained apply to zoo model names, not artifacts.")
        if path.suffix == ".pt":
            module, info = load_fused(path)
            return TorchRunner(module, info, threads)
        spec = target_for_artifact(path)
        if spec is None:
            raise EdgevtError(f"{path}: unknown artifact type (known: .onnx, fused .pt).")
        from edgevt.targets.onnx import OnnxRuntimeRunner

        return OnnxRuntimeRunner(path, threads=threads)
    if path.suffix in (".onnx", ".pt", ".tflite", ".engine") or "/" in str(model_or_artifact):
        raise EdgevtError(f"{model_or_artifact} does not exist.")
    if fused:
        outcome = fuse(str(model_or_artifact), checkpoint, pretrained=pretrained, seed=seed)
        return TorchRunner(outcome.model, _info(outcome.loaded, "pytorch", True), threads)
    loaded = load_model(str(model_or_artifact), checkpoint, pretrained=pretrained, seed=seed)
    return TorchRunner(loaded.model, _info(loaded, "pytorch", False), threads)


def evaluate(
    model_or_artifact: str | Path,
    data: str | Path,
    checkpoint: str | Path | None = None,
    *,
    pretrained: bool = False,
    labels: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    threads: int | None = None,
    fused: bool = False,
    progress: bool = True,
) -> EvalResult:
    """Top-1/top-5 of a zoo model or an exported artifact on labelled images."""
    runner = open_runner(
        model_or_artifact, checkpoint, pretrained=pretrained, threads=threads, fused=fused
    )
    dataset = open_dataset(data, labels=labels, synsets=runner.info.classes).subset(limit)
    return _evaluate(runner, dataset, batch_size=batch_size, progress=progress)
