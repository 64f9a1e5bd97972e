"""Fusing a zoo model (``fuse``), fused models on disk (``fused.pt``, written by ``edgevt fuse``
and ``edgevt qat``), the ArtifactInfo of a loaded model, and the real images numerics are
checked on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgevt.artifact import ArtifactInfo
from edgevt.data.imagenet import (
    default_data_root,
    imagenet_synsets,
    no_images_message,
    sample_batch,
)
from edgevt.errors import EdgevtError
from edgevt.fuse import FuseReport, fuse_model, fused_skeleton
from edgevt.io import atomic_path, sha256, write_json
from edgevt.models import LoadedModel, check_weights, get_entry, load_model
from edgevt.models.checkpoint import unpickler_reason
from edgevt.run import RunDir, undo_on_error

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
            raise EdgevtError(no_images_message("--data", data))
        gen = torch.Generator().manual_seed(0)
        size = preprocess.input_size
        return torch.randn(n, 3, size, size, generator=gen), f"{n} random inputs ({described})"
    return torch.from_numpy(images), described


def model_inputs(loaded: LoadedModel) -> dict[str, Any]:
    """What a stage's manifest record says went in: the model, its weights, their hash."""
    inputs: dict[str, Any] = {"model": loaded.entry.name, "weights": loaded.weights}
    if loaded.checkpoint is not None:
        inputs["checkpoint"] = str(loaded.checkpoint)
        inputs["checkpoint_sha256"] = sha256(loaded.checkpoint)
    return inputs


def model_info(loaded: LoadedModel, target: str, fused: bool) -> ArtifactInfo:
    """The fp32 ArtifactInfo of a loaded model, as ``target`` embeds it."""
    return ArtifactInfo(
        model=loaded.entry.name,
        preprocess=loaded.entry.preprocess,
        classes=imagenet_synsets(),
        target=target,
        precision="fp32",
        weights=loaded.weights,
        extra={"fused": fused},
    )


def save_fused(path: str | Path, model_name: str, weights: str, model: nn.Module) -> Path:
    """Write a fused model as ``edgevt fuse`` does (``--checkpoint`` and ``eval`` take it)."""
    with atomic_path(path) as tmp:
        torch.save(
            {"edgevt_fused": model_name, "weights": weights, "state_dict": model.state_dict()}, tmp
        )
    return Path(path)


def is_fused_file(path: str | Path) -> bool:
    """Whether ``path`` is a model written by ``edgevt fuse`` / ``edgevt qat`` (fused.pt)."""
    path = Path(path)
    if not path.is_file() or path.suffix not in (".pt", ".pth"):
        return False
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return False  # the checkpoint loader gives the precise error
    return isinstance(saved, dict) and "edgevt_fused" in saved


def already_fused(
    model: str, checkpoint: str | Path, pretrained: bool
) -> tuple[LoadedModel, nn.Module, FuseReport]:
    """A fused.pt given as --checkpoint (a QAT result, say): used as it is, nothing to fold."""
    if pretrained:
        raise EdgevtError("pass either --checkpoint or --pretrained, not both.")
    fused, info = load_fused(checkpoint)
    if info.model != model:
        raise EdgevtError(
            f"{checkpoint} is a fused {info.model}, not {model}; name the model it was made for."
        )
    entry = get_entry(model)
    left = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    report = FuseReport({}, left, left, 0.0, 0.0, 0.0, f"none: {Path(checkpoint).name} is fused")
    return LoadedModel(fused, entry, info.weights, Path(checkpoint)), fused, report


def load_fused(path: str | Path) -> tuple[nn.Module, ArtifactInfo]:
    """Rebuild a model saved by ``edgevt fuse`` (``fused.pt``)."""
    path = Path(path)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EdgevtError(
            f"cannot read {path} as an edgevt fused model (corrupt, truncated or another kind "
            f"of file: {unpickler_reason(exc)}); write it again with `edgevt fuse`."
        ) from exc
    if not isinstance(saved, dict) or "edgevt_fused" not in saved:
        raise EdgevtError(f"{path} is not an edgevt fused model (written by `edgevt fuse`).")
    if not isinstance(saved["edgevt_fused"], str) or not isinstance(saved.get("state_dict"), dict):
        raise EdgevtError(f"{path} is a damaged edgevt fused model; write it again (edgevt fuse).")
    try:
        entry = get_entry(saved["edgevt_fused"])
    except EdgevtError:  # a name the user never typed: say where it came from
        raise EdgevtError(
            f"{path} holds a fused {saved['edgevt_fused']!r}, a model this edgevt does not know "
            "(`edgevt models`) — write it again with `edgevt fuse`."
        ) from None
    skeleton = fused_skeleton(entry.build(), entry.family, entry.preprocess.input_size)
    try:
        skeleton.load_state_dict(saved["state_dict"])
    except RuntimeError as exc:  # the weights of another model, or of another version
        first = (str(exc).splitlines()[1:2] or [str(exc)])[0].strip()[:120]
        raise EdgevtError(
            f"{path} says it holds {entry.name} but its weights do not fit it ({first}); write "
            "it again with `edgevt fuse`."
        ) from None
    check_weights(skeleton, path)
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
class FuseOutcome:
    model: nn.Module
    report: FuseReport
    loaded: LoadedModel
    run_dir: RunDir | None = None


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
    if checkpoint is not None and is_fused_file(checkpoint):
        loaded, fused, report = already_fused(model, checkpoint, pretrained)
        described = report.inputs
    else:
        loaded = load_model(model, checkpoint, pretrained=pretrained, seed=seed)
        images, described = check_images(loaded.entry.preprocess, data)
        fused, report = fuse_model(loaded.model, loaded.entry.family, images, described)
    run = None
    if out is not None:
        with undo_on_error(out):  # fused.pt without its report and record is not kept
            run = RunDir(out)
            with run.locked():
                save_fused(run / FUSED_FILE, loaded.entry.name, loaded.weights, fused)
                write_json(run / "fuse.json", report.to_dict())
                run.record(
                    "fuse",
                    model_inputs(loaded),
                    {"verify_inputs": described},
                    {"fused": run / FUSED_FILE, "report": run / "fuse.json"},
                    report.to_dict(),
                )
    return FuseOutcome(fused, report, loaded, run)
