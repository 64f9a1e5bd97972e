"""``open_runner``: a runner for any artifact (by the target that wrote it), a ``fused.pt``, or a
zoo model name."""

from __future__ import annotations

from pathlib import Path

from edgevt.errors import EdgevtError
from edgevt.targets import all_targets, artifact_target, target_for_path
from edgevt.targets.base import Runner


def open_runner(
    model_or_artifact: str | Path,
    checkpoint: str | Path | None = None,
    *,
    pretrained: bool = False,
    threads: int | None = None,
    fused: bool = False,
    seed: int = 0,
) -> Runner:
    """A runner for an artifact path, a ``fused.pt``, or a zoo model name (unfused unless
    ``fused``)."""
    from edgevt.targets.pytorch import TorchRunner

    path = Path(model_or_artifact)
    if threads is not None and threads < 1:
        raise EdgevtError(f"--threads {threads}: the thread count must be >= 1.")
    if path.exists() and (path.is_file() or target_for_path(path) is not None):
        if checkpoint is not None or pretrained or fused or seed:
            raise EdgevtError(
                "--checkpoint, --pretrained, --fused and --seed apply to zoo model names, not "
                f"to an exported file like {path.name}."
            )
        if path.suffix in (".pt", ".pth"):
            from edgevt.fused import load_fused

            module, info = load_fused(path)
            return TorchRunner(module, info, threads)
        return artifact_target(path).runner(path, threads)
    if path.is_dir():
        raise EdgevtError(
            f"{path} is a folder, not a model; pass a file in it (e.g. {path / 'model.onnx'})."
        )
    suffixes = {s for t in all_targets().values() for s in t.spec.suffixes}
    if path.suffix in {".pt", ".pth", *suffixes} or "/" in str(model_or_artifact):
        raise EdgevtError(
            f"{model_or_artifact} does not exist — check the path (or give a zoo name: "
            "`edgevt models`)."
        )
    from edgevt.fused import fuse, model_info

    if fused:
        outcome = fuse(str(model_or_artifact), checkpoint, pretrained=pretrained, seed=seed)
        return TorchRunner(outcome.model, model_info(outcome.loaded, "pytorch", True), threads)
    from edgevt.models import load_model

    loaded = load_model(str(model_or_artifact), checkpoint, pretrained=pretrained, seed=seed)
    return TorchRunner(loaded.model, model_info(loaded, "pytorch", False), threads)
