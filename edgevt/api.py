"""The Python API: every CLI command is one of these functions.

>>> import edgevt
>>> out = edgevt.export("efficientnet_lite0", pretrained=True, out="runs/lite0")
>>> edgevt.evaluate(out.artifact, data="../shared/data/imagenet-val1000").top1
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator
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
from edgevt.quant.table import CalibrationTable
from edgevt.run import RunDir, library_versions
from edgevt.targets import (
    artifact_name,
    get_target,
    needs_calibration,
    resolve_precisions,
    target_for_artifact,
)
from edgevt.targets.base import Runner
from edgevt.validate.evaluate import EvalResult, compare_logits
from edgevt.validate.evaluate import evaluate as _evaluate
from edgevt.validate.significance import paired_top1

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
    if checkpoint is not None and is_fused_file(checkpoint):
        loaded, fused, report = _already_fused(model, checkpoint, pretrained)
        described = report.inputs
    else:
        loaded = load_model(model, checkpoint, pretrained=pretrained, seed=seed)
        images, described = check_images(loaded.entry.preprocess, data)
        fused, report = fuse_model(loaded.model, loaded.entry.family, images, described)
    run = None
    if out is not None:
        run = RunDir(out)
        save_fused(run / FUSED_FILE, loaded.entry.name, loaded.weights, fused)
        write_json(run / "fuse.json", report.to_dict())
        run.record(
            "fuse",
            _model_inputs(loaded),
            {"verify_inputs": described},
            {"fused": run / FUSED_FILE, "report": run / "fuse.json"},
            report.to_dict(),
        )
    return FuseOutcome(fused, report, loaded, run)


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


def _already_fused(
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


DEFAULT_CALIB_SIZE = 512


def calibrate(
    model: str,
    checkpoint: str | Path | None = None,
    *,
    data: str | Path,
    pretrained: bool = False,
    calib_size: int = DEFAULT_CALIB_SIZE,
    method: str = "percentile",
    percentile: float = 99.99,
    out: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    fused: FuseOutcome | None = None,
) -> CalibrationTable:
    """Observe the fused model on ``calib_size`` images of ``data`` (any image folder) and
    return (and write to ``out``, a .json path) its CalibrationTable.

    Args:
        method: minmax, percentile, entropy (TensorRT's KL) or mse.
        fused: an already fused model to calibrate (skips loading and fusing again).
    """
    from edgevt.quant.calibrate import calibrate_model, calibration_batches
    from edgevt.quant.observers import METHODS

    if method not in METHODS:
        raise EdgevtError(
            f"unknown calibration method {method!r}; choose from {', '.join(METHODS)}."
        )
    if calib_size < 1:
        raise EdgevtError("--calib-size must be at least 1.")
    if not (50.0 < percentile < 100.0):
        raise EdgevtError("--percentile must lie between 50 and 100 (e.g. 99.99).")
    fused = fused or fuse(model, checkpoint, pretrained=pretrained, seed=seed)
    loaded = fused.loaded
    source = {**_model_inputs(loaded), "data": str(data), "calib_size": calib_size}
    source["versions"] = {k: v for k, v in library_versions().items() if k in ("torch", "edgevt")}
    batches = calibration_batches(loaded.entry.preprocess, data, calib_size, progress=progress)
    table = calibrate_model(
        fused.model,
        batches,
        model_name=loaded.entry.name,
        weights=loaded.weights,
        method=method,
        percentile=percentile,
        source=source,
    )
    if out is not None:
        table.save(out)
    return table


@dataclass
class ExportOutcome:
    artifact: Path
    run_dir: RunDir
    fuse_report: FuseReport
    check: dict[str, float]
    weights: str
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)
    int8: dict[str, Any] | None = None
    artifacts: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> check
    quantization: dict[str, Any] = field(default_factory=dict)


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
    int8: bool = False,
    calib: str | Path | None = None,
    calib_table: str | Path | None = None,
    calib_size: int = DEFAULT_CALIB_SIZE,
    method: str = "percentile",
    quant_config: str | Path | None = None,
    max_drop: float | None = None,
    precisions: list[str] | None = None,
    int8_io: bool = False,
    float_ops: list[str] | None = None,
    deployment_target: str | None = None,
) -> ExportOutcome:
    """Fuse, export to ``target`` and check the artifact against the fused PyTorch model.

    Args:
        out: run directory; None means ``runs/<model>``.
        data: images for the fusion and export checks (see ``fuse``).
        eval_data: labelled images; if given, top-1/top-5 of the fp32 PyTorch reference and of
            every artifact are measured and written to ``eval.json``.
        limit: evaluate on at most this many images.
        int8: also write the int8 QDQ model, from ``calib_table`` or by calibrating on ``calib``.
        quant_config: JSON QuantConfig (None = defaults for vision transformers).
        max_drop: accuracy budget in top-1 points; sensitive layers stay in float to meet it.
        precisions: more precisions than fp32 (see ``edgevt targets``); ``int8=True`` adds int8.
        int8_io: tflite int8 with int8 input/output tensors (default float32 in and out).
        float_ops: tflite int8: TFLite op types kept in float (e.g. ``["HARD_SWISH"]``).
        deployment_target: Core ML minimum deployment target (None = the oldest that holds
            each precision: iOS15 fp32/fp16, iOS16 w8, iOS17 w8a8).
    """
    spec = get_target(target)
    wanted = resolve_precisions(spec, precisions, int8)
    int8 = needs_calibration(wanted)
    if spec.name in ("onnx", "tensorrt") and set(wanted) - {"fp32", "int8"}:
        raise EdgevtError(
            f"--target {spec.name} writes fp32 and int8 models; TensorRT's fp16 engine is built "
            "on the device from model.onnx (see the trtexec script of an int8 export)."
        )
    if float_ops and (spec.name != "tflite" or "int8" not in wanted):
        raise EdgevtError("--float-ops applies to --target tflite with --precision int8 only.")
    if deployment_target is not None and spec.name != "coreml":
        raise EdgevtError("--deployment-target applies to --target coreml only.")
    if spec.name in ("tflite", "coreml") and max_drop is not None:
        raise EdgevtError(
            f"--max-drop is not yet honoured by the {spec.name} target; choose the float ops with "
            "--quant-config, or use --target onnx for the accuracy-budgeted search."
        )
    if spec.extra is not None and spec.name != "tensorrt":
        _require_extra(spec.name)
    if int8 and calib is None and calib_table is None:
        raise EdgevtError(
            "--int8 needs calibration data: --calib DIR (any image folder, e.g. "
            "../shared/data/imagenet-sample1000) or --calib-table calib/NAME.json."
        )
    if not int8 and (calib or calib_table or max_drop is not None):
        raise EdgevtError("--calib, --calib-table and --max-drop only apply with --int8.")
    table = None
    if calib_table is not None:
        table = CalibrationTable.load(calib_table)
        table.check_for(model)
    elif calib is not None:
        from edgevt.quant.calibrate import calibration_batches

        next(iter(calibration_batches(get_entry(model).preprocess, calib, 1, progress=False)))
    config = _quant_config(quant_config) if int8 else None
    run = RunDir(out or Path("runs") / model)
    fused = fuse(model, checkpoint, pretrained=pretrained, data=data, out=run.path, seed=seed)
    loaded = fused.loaded
    if spec.name == "coreml":
        return _export_coreml(
            fused, run, wanted, data, eval_data, limit, progress, table, calib, calib_size,
            method, _quant_config(quant_config), deployment_target,
        )  # fmt: skip
    if spec.name == "tflite":
        return _export_tflite(
            fused, run, wanted, data, eval_data, limit, progress, table, calib, calib_size,
            method, int8_io, _quant_config(quant_config) if quant_config else None,
            tuple(float_ops or ()),
        )  # fmt: skip
    from edgevt.targets.onnx import OnnxRuntimeRunner, export_onnx

    artifact = run / artifact_name(spec, "fp32")
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
    outcome.artifacts = {artifact.name: check}
    artifacts = [artifact]
    if int8:
        table = _table_for(fused, table, calib, calib_size, method, progress)
        table.save(run / "calibration.json")
        int8_outcome = _export_int8(
            fused,
            table,
            config,
            target,
            artifact,
            run,
            images,
            described,
            reference,
            max_drop=max_drop,
            calib=calib,
            progress=progress,
        )
        outcome.int8 = int8_outcome
        outcome.artifacts[int8_outcome["artifact"].name] = int8_outcome["check"]
        artifacts.append(int8_outcome["artifact"])
    if eval_data is not None:
        outcome.evals = _evaluate_run(loaded, artifacts, run, eval_data, limit, progress)
    return outcome


def _evaluate_run(
    loaded: LoadedModel,
    artifacts: list[Path],
    run: RunDir,
    eval_data: str | Path,
    limit: int | None,
    progress: bool,
) -> dict[str, dict[str, Any]]:
    """Score PyTorch fp32 and every artifact; write eval.json and record the stage."""
    evals = evaluate_against_reference(loaded, artifacts, eval_data, limit, progress)
    write_json(run / "eval.json", evals)
    run.record(
        "eval",
        {**_model_inputs(loaded), "data": str(eval_data), "limit": limit},
        artifacts={"eval": run / "eval.json"},
        results=evals,
    )
    return evals


def _require_extra(target: str) -> None:
    if target == "tflite":
        from edgevt.targets.tflite import require

        for module in ("litert_torch", "ai_edge_quantizer", "ai_edge_litert"):
            require(module)
    if target == "coreml":
        from edgevt.targets.coreml import require

        require()


def _table_for(
    fused: FuseOutcome,
    table: CalibrationTable | None,
    calib: str | Path | None,
    calib_size: int,
    method: str,
    progress: bool,
) -> CalibrationTable:
    """The table given, or one measured on ``calib``; checked to cover the model's ops."""
    if table is None:
        table = calibrate(
            fused.loaded.entry.name,
            data=calib,
            calib_size=calib_size,
            method=method,
            fused=fused,
            progress=progress,
        )
    table.check_for(
        fused.loaded.entry.name, _quantized_keys(fused.model, fused.loaded.entry.preprocess)
    )
    return table


def _export_tflite(
    fused: FuseOutcome,
    run: RunDir,
    precisions: list[str],
    data: str | Path | None,
    eval_data: str | Path | None,
    limit: int | None,
    progress: bool,
    table: CalibrationTable | None,
    calib: str | Path | None,
    calib_size: int,
    method: str,
    int8_io: bool,
    config=None,
    float_ops: tuple[str, ...] = (),
) -> ExportOutcome:
    """fp32 .tflite through litert-torch, then fp16 / w8 / int8 from it; each one checked
    against the fused PyTorch model and recorded. int8 is full-integer unless ``config`` (a
    QuantConfig) names the ops to quantize."""
    from edgevt.quant.calibrate import calibration_batches
    from edgevt.targets import tflite

    loaded = fused.loaded
    spec = get_target("tflite")
    images, described = check_images(loaded.entry.preprocess, data)
    with torch.no_grad():
        reference = fused.model(images).numpy()
    fp32 = run / artifact_name(spec, "fp32")
    with _stage(progress, f"converting {loaded.entry.name} to TFLite (litert-torch)"):
        tflite.convert_fp32(fused.model, images[:1], _info(loaded, "tflite", True), fp32)
    artifacts, checks, quant = [fp32], {}, {}
    if "int8" in precisions:
        table = _table_for(fused, table, calib, calib_size, method, progress)
        table.save(run / "calibration.json")
        folder = calib or table.source.get("data")
        if folder is None or not Path(folder).is_dir():
            raise EdgevtError(
                "tflite int8 ranges the tensors the table has no entry for (LayerNorm, Softmax "
                f"outputs) on the table's calibration images, but {folder} is not a folder; "
                "pass --calib DIR."
            )
        n = min(calib_size, tflite.GAP_CALIBRATION_IMAGES)
        gap_images = torch.cat(
            list(calibration_batches(loaded.entry.preprocess, folder, n, progress=False))
        ).numpy()
    modules = [name for name, _ in fused.model.named_modules()]
    for precision in precisions[1:]:
        path = run / artifact_name(spec, precision)
        with _stage(progress, f"quantizing to {precision} (ai-edge-quantizer)"):
            report = tflite.quantize(
                fp32,
                path,
                precision,
                _info(loaded, "tflite", True),
                table=table if precision == "int8" else None,
                modules=modules,
                images=gap_images if precision == "int8" else None,
                int8_io=int8_io,
                config=config,
                float_ops=float_ops if precision == "int8" else (),
            )
        quant[precision] = report.to_dict()
        artifacts.append(path)
    for path in artifacts:
        with tflite.LiteRTRunner(path) as runner:
            checks[path.name] = compare_logits(reference, runner.infer(images.numpy()))
    if config is not None:
        write_json(run / "quant_config.json", config.to_dict())
    outcome = _finish_export(
        fused, run, artifacts, checks, {"quantization": quant},
        {"target": "tflite", "precisions": precisions, "check_inputs": described,
         "int8_io": int8_io, "float_ops": list(float_ops)},
        {k for k, used in (("calibration", table), ("config", config)) if used is not None},
        eval_data, limit, progress,
    )  # fmt: skip
    if "int8" in quant:
        q = quant["int8"]
        outcome.int8 = {
            "artifact": run / artifact_name(spec, "int8"),
            "check": checks[artifact_name(spec, "int8")],
            "quantized_ops": q["honoured"],
            "float_ops": q["float_ops"],
            "not_honoured": q["not_honoured"] + q["scale_problems"],
            "table_keys": q["table_keys"],
            "config_ops": q["config_ops"],
        }
    return outcome


def _export_coreml(
    fused: FuseOutcome,
    run: RunDir,
    precisions: list[str],
    data: str | Path | None,
    eval_data: str | Path | None,
    limit: int | None,
    progress: bool,
    table: CalibrationTable | None,
    calib: str | Path | None,
    calib_size: int,
    method: str,
    config,
    deployment_target: str | None,
) -> ExportOutcome:
    """One ML Program package per precision; checked structurally (op census) and by running
    it (Apple's runtime on macOS, the MIL reference interpreter elsewhere)."""
    from edgevt.targets import coreml

    loaded = fused.loaded
    spec = get_target("coreml")
    images, described = check_images(loaded.entry.preprocess, data)
    with torch.no_grad():
        reference = fused.model(images).numpy()
    for precision in precisions:  # a too-old deployment target fails before any conversion
        coreml.deployment_target(deployment_target, precision)
    if "w8a8" in precisions:
        table = _table_for(fused, table, calib, calib_size, method, progress)
        table.save(run / "calibration.json")
        write_json(run / "quant_config.json", config.to_dict())
    artifacts, checks, exports = [], {}, {}
    for precision in precisions:
        path = run / artifact_name(spec, precision)
        with _stage(progress, f"converting {loaded.entry.name} to Core ML {precision}"):
            done = coreml.export_coreml(
                fused.model, _info(loaded, "coreml", True), path, precision=precision,
                table=table if precision == "w8a8" else None, example=images[:1],
                minimum_deployment_target=deployment_target, config=config,
            )  # fmt: skip
        exports[precision] = {k: v for k, v in done.to_dict().items() if k != "activation_keys"}
        with coreml.CoreMLRunner(path) as runner:
            checks[path.name] = compare_logits(reference, runner.infer(images.numpy()))
            checks[path.name]["runtime"] = runner.describe()["backend"]
        artifacts.append(path)
    outcome = _finish_export(
        fused, run, artifacts, checks, {"packages": exports},
        {"target": "coreml", "precisions": precisions, "check_inputs": described,
         "deployment_target": deployment_target},
        {"calibration", "config"} if table is not None else set(),
        eval_data, limit, progress,
    )  # fmt: skip
    if "w8a8" in exports:
        e = exports["w8a8"]
        outcome.int8 = {
            "artifact": run / artifact_name(spec, "w8a8"),
            "check": checks[artifact_name(spec, "w8a8")],
            "quantized_ops": e["census"]["int8_ops"],
            "float_ops": e["kept_float"],
            "not_honoured": e["unexpected_float"] + e["notes"],
        }
    return outcome


QUANT_FILES = {"calibration": "calibration.json", "config": "quant_config.json"}


def _finish_export(
    fused: FuseOutcome,
    run: RunDir,
    artifacts: list[Path],
    checks: dict[str, dict[str, Any]],
    details: dict[str, Any],
    settings: dict[str, Any],
    quant_files: set[str],
    eval_data: str | Path | None,
    limit: int | None,
    progress: bool,
) -> ExportOutcome:
    """Record a multi-precision export (artifacts, their checks, the target's ``details``, the
    ``quant_files`` it wrote), evaluate it when asked, return its outcome; ``artifacts[0]`` is
    the fp32 one."""
    files = {p.stem: p for p in artifacts}
    files.update({k: run / f for k, f in QUANT_FILES.items() if k in quant_files})
    run.record(
        "export", _model_inputs(fused.loaded), settings, files, {"checks": checks, **details}
    )
    first = artifacts[0]
    outcome = ExportOutcome(first, run, fused.report, checks[first.name], fused.loaded.weights)
    outcome.artifacts = {p.name: checks[p.name] for p in artifacts}
    outcome.quantization = next(iter(details.values()))
    if eval_data is not None:
        outcome.evals = _evaluate_run(fused.loaded, artifacts, run, eval_data, limit, progress)
    return outcome


@contextlib.contextmanager
def _stage(progress: bool, what: str) -> Iterator[None]:
    """One line before and after a step that has no progress bar of its own."""
    start = time.perf_counter()
    if progress:
        print(f"{what} ...", file=sys.stderr, flush=True)
    yield
    if progress:
        print(f"  done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


def _quant_config(path: str | Path | None):
    from edgevt.quant.config import QuantConfig

    return QuantConfig() if path is None else QuantConfig.load(path)


def _export_int8(
    fused: FuseOutcome,
    table: CalibrationTable,
    config,
    target: str,
    fp32_artifact: Path,
    run: RunDir,
    images: torch.Tensor,
    described: str,
    reference,
    *,
    max_drop: float | None,
    calib: str | Path | None,
    progress: bool,
) -> dict[str, Any]:
    """Write the int8 QDQ model (and, for TensorRT, its build kit); check it; record it."""
    from edgevt.quant.onnx_qdq import RULES, write_qdq_onnx
    from edgevt.targets.onnx import OnnxRuntimeRunner

    rules = RULES[target]
    loaded = fused.loaded
    sensitivity = None
    if max_drop is not None:
        from edgevt.quant.sensitivity import choose_float_layers

        sensitivity = choose_float_layers(
            fused.model,
            table,
            config,
            rules,
            calib or table.source.get("data"),
            loaded.entry.preprocess,
            max_drop,
            fp32_onnx=fp32_artifact,
            progress=progress,
        )
        config = config.keep_float(sensitivity.kept_float)
        write_json(run / "sensitivity.json", sensitivity.to_dict())
    write_json(run / "quant_config.json", config.to_dict())
    info = _info(loaded, target, fused=True)
    info.precision = "int8"
    qdq = run / "model_int8.onnx"
    plan = write_qdq_onnx(fp32_artifact, qdq, table, config, rules, info)
    with OnnxRuntimeRunner(qdq) as runner:
        fused_kernels = runner.infer(images.numpy())
    check = compare_logits(reference, fused_kernels)
    if target == "onnx":  # ORT's int8 kernels vs the exact QDQ numerics (saturation check)
        with OnnxRuntimeRunner(qdq, optimization="none") as runner:
            exact = compare_logits(runner.infer(images.numpy()), fused_kernels)
        check["kernels_vs_exact_cosine"] = exact["cosine"]
        if exact["cosine"] < 0.999:
            print(
                f"warning: ONNX Runtime's int8 kernels depart from the exact QDQ numerics here "
                f"(cosine {exact['cosine']:.4f}; u8s8 kernels saturate on x86 CPUs without "
                "VNNI, and ORT's extended graph fusions round differently); accuracy measured "
                "with `edgevt eval` is what this machine gives.",
                file=sys.stderr,
            )
    result: dict[str, Any] = {
        "artifact": qdq,
        "check": check,
        "quantized_ops": len(plan.quantized),
        "float_ops": plan.kept_float,
        "not_honoured": plan.not_honoured,
        "sensitivity": sensitivity.to_dict() if sensitivity else None,
    }
    files = {
        "model": qdq,
        "calibration": run / "calibration.json",
        "config": run / "quant_config.json",
    }
    if target == "tensorrt":
        result.update(_tensorrt_kit(fp32_artifact, qdq, plan, loaded, run))
        files.update({k: v for k, v in result.items() if k in ("calib_cache", "trtexec")})
    run.record(
        "export_int8",
        {**_model_inputs(loaded), "calibration_method": table.method},
        {"target": target, "check_inputs": described, "max_drop": max_drop},
        files,
        {k: v for k, v in result.items() if k not in ("artifact", "calib_cache", "trtexec")},
    )
    return result


def _tensorrt_kit(
    fp32_artifact: Path, qdq: Path, plan, loaded: LoadedModel, run: RunDir
) -> dict[str, Any]:
    """Check TensorRT's Q/DQ rules, write the legacy cache and trtexec script, build the engine
    where TensorRT runs."""
    import onnx

    from edgevt.targets.onnx import INPUT_NAME
    from edgevt.targets.tensorrt import (
        build_engine,
        check_tensorrt_qdq,
        tensorrt_available,
        trtexec_commands,
        write_calibration_cache,
    )

    problems = check_tensorrt_qdq(onnx.load(str(qdq)))
    if problems:
        raise EdgevtError(
            f"{qdq} breaks {len(problems)} TensorRT Q/DQ rule(s), first: {problems[0]}"
        )
    # plan.ranges is keyed by the fp32 graph's tensor names: what implicit int8 calibrates
    cache = write_calibration_cache(plan.ranges, run / "calib.cache")
    size = loaded.entry.preprocess.input_size
    script = run / "trtexec.sh"
    with atomic_path(script) as tmp:
        tmp.write_text(trtexec_commands(qdq.name, fp32_artifact.name, cache.name, INPUT_NAME, size))
    script.chmod(0o755)
    result: dict[str, Any] = {"calib_cache": cache, "trtexec": script, "tensorrt_rules": "ok"}
    why_not = tensorrt_available()
    if why_not is None:
        result["engine"] = build_engine(qdq, qdq.with_suffix(".engine"), INPUT_NAME, size)
    else:
        result["engine"] = None
        result["engine_note"] = (
            f"engine to be built on the device ({why_not}): run trtexec.sh there; "
            "ONNX Runtime ran the same QDQ graph as the stand-in for TensorRT's int8 numerics"
        )
    return result


QAT_CHECKPOINT = "qat_checkpoint.pt"


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
    target: str = "onnx",
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
        target: whose int8 rules the training simulates (``onnx``, ``tensorrt`` or
            ``tflite``); train for the target you ship to. The result exports to every target.
        steps / epochs: training length (default: 300 steps).
        lr / range_lr / clip_lr: Adam learning rates of the weights, of the activation ranges
            and of the weight clips (the last two relative: 1e-4 moves a range by at most
            about 0.01 % per step).
        lr_unit: ``absolute``, or ``step``: ``lr`` counts in each tensor's int8 step (for
            weights whose scales differ by orders of magnitude, e.g. per-tensor weights).
        crop_scale: below 1, train on random-resized crops covering at least this fraction
            of each image, the teacher scoring every crop (more views of few images).
        images: how many images of ``data`` to train on (held in memory, preprocessed once).
        device: ``cuda`` / ``cpu``; None picks the GPU when there is one.
    """
    import tempfile

    from edgevt.quant.onnx_qdq import SIMULATED_RULES
    from edgevt.quant.qat import QatSettings, QuantSim, train
    from edgevt.targets.onnx import export_onnx

    if target not in SIMULATED_RULES:
        raise EdgevtError(
            f"--target {target!r}: QAT simulates the int8 rules of "
            f"{', '.join(SIMULATED_RULES)}; its result then exports to every target (coreml "
            "takes the learned table too)."
        )
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
    if lr <= 0 or range_lr < 0 or clip_lr < 0 or temperature <= 0:
        raise EdgevtError(
            "--lr and --temperature must be positive, --range-lr and --clip-lr not negative."
        )
    table = CalibrationTable.load(calib_table)
    table.check_for(model)
    config = _quant_config(quant_config)
    rules = SIMULATED_RULES[target]
    dataset = open_dataset(_image_folder(data), require_labels=False).subset(images)
    if len(dataset) == 0:
        raise EdgevtError(f"{data} holds no images (.jpg/.jpeg/.png...) to train on.")
    n_steps = steps or (math.ceil(epochs * len(dataset) / batch) if epochs else 300)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    run = RunDir(out)
    fused = fuse(model, checkpoint, pretrained=pretrained, seed=seed)
    loaded = fused.loaded
    table.check_for(model, _quantized_keys(fused.model, loaded.entry.preprocess))
    with _stage(progress, "finding what the int8 graph quantizes"), tempfile.TemporaryDirectory(
    ) as tmp:  # fmt: skip
        fp32 = export_onnx(fused.model, _info(loaded, "onnx", True), Path(tmp) / "m.onnx")
        sim = QuantSim.for_export(fused.model, fp32, table, config, rules)
    per_tensor = [n for n, (_, per_channel) in sim.weight_ops.items() if not per_channel]
    if per_tensor and lr_unit == "absolute" and progress:
        # Measured on Lite0 (README): 36 % of the per-tensor PTQ loss recovered, 66-86 % in steps.
        print(f"note: {len(per_tensor)} weight tensors are per-tensor, whose int8 steps one "
              "absolute --lr barely moves; consider --lr-unit step --lr 3e-3", file=sys.stderr)
    x, teacher = _qat_data(
        fused.model, dataset, loaded.entry.preprocess, progress, logits=crop_scale >= 1.0
    )
    settings = QatSettings(
        n_steps, batch, lr, lr_unit, range_lr, clip_lr, temperature, crop_scale, seed, str(data),
        len(dataset),
        sha256(calib_table), target,
    )  # fmt: skip
    ckpt = run / QAT_CHECKPOINT
    if restart and ckpt.exists():
        ckpt.unlink()
    start = time.perf_counter()
    state = train(
        sim, x, teacher, settings, ckpt, save_every=save_every, device=device,
        progress=progress, on_step=on_step, teacher=fused.model,
    )  # fmt: skip
    trained = sim.cpu().export_model()
    weights = f"QAT ({n_steps} steps on {Path(data).name}) of {loaded.weights}"
    model_path = save_fused(run / FUSED_FILE, loaded.entry.name, weights, trained)
    learned = sim.learned_table(table, {**settings.to_dict(), "base_method": table.method})
    learned.weights = weights
    learned.save(run / "calibration.json")
    write_json(run / "quant_config.json", config.to_dict())
    hist = state.history
    tail = hist[-min(len(hist), 25) :]
    summary = {
        "steps": state.step,
        "quantized_tensors": len(sim.tensors),
        "quantized_weights": len(sim.weight_ops),
        "loss_first": hist[0]["loss"] if hist else None,
        "loss_last25": sum(h["loss"] for h in tail) / max(len(tail), 1),
        "agreement_last25": sum(h["agreement"] for h in tail) / max(len(tail), 1),
        "seconds_this_run": round(time.perf_counter() - start, 1),
        "device": device,
    }
    write_json(run / "qat.json", {"settings": settings.to_dict(), "summary": summary,
                                  "history": hist})  # fmt: skip
    run.record(
        "qat",
        {**_model_inputs(loaded), "calibration_table": str(calib_table)},
        settings.to_dict(),
        {"model": model_path, "calibration": run / "calibration.json", "log": run / "qat.json"},
        summary,
    )
    return QatOutcome(model_path, run / "calibration.json", run, state.step, summary)


def _image_folder(data: str | Path) -> Path:
    path = Path(data)
    if not path.is_dir():
        raise EdgevtError(f"--data {data} is not a folder of images.")
    return path


def _quantized_keys(model: nn.Module, preprocess) -> set[str]:
    """The input keys of the model's quantizable ops (a table of another version lacks some)."""
    from edgevt.quant.calibrate import trace_ops

    size = preprocess.input_size
    return {k for op in trace_ops(model, torch.zeros(1, 3, size, size)) for k in op.input_keys}


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


def evaluate_against_reference(
    loaded: LoadedModel,
    artifacts: Path | list[Path],
    data: str | Path,
    limit: int | None,
    progress: bool,
) -> dict[str, dict[str, Any]]:
    """Top-1/top-5 of the unfused fp32 PyTorch model and of each artifact, and their agreement."""
    dataset = open_dataset(data).subset(limit)
    from edgevt.targets.pytorch import TorchRunner

    ref = _evaluate(
        TorchRunner(loaded.model, _info(loaded, "pytorch", False)), dataset, progress=progress
    )
    results: dict[str, dict[str, Any]] = {"pytorch_fp32": ref.to_dict()}
    for artifact in [artifacts] if isinstance(artifacts, Path) else artifacts:
        art = _evaluate(open_runner(artifact), dataset, progress=progress)
        results[artifact.name] = {
            **art.to_dict(),
            "vs_pytorch_fp32": {
                **compare_logits(ref.logits, art.logits),
                **paired_top1(ref.labels, ref.logits, art.logits),
            },
        }
    return results


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
    if path.exists() and (path.is_file() or path.suffix == ".mlpackage"):
        if checkpoint is not None or pretrained:
            raise EdgevtError("--checkpoint/--pretrained apply to zoo model names, not artifacts.")
        if path.suffix == ".pt":
            module, info = load_fused(path)
            return TorchRunner(module, info, threads)
        spec = target_for_artifact(path)
        if spec is None:
            raise EdgevtError(
                f"{path}: unknown artifact type (known: .onnx, .tflite, .mlpackage, fused .pt)."
            )
        if spec.name == "tflite":
            from edgevt.targets.tflite import LiteRTRunner

            return LiteRTRunner(path, threads=threads)
        if spec.name == "coreml":
            from edgevt.targets.coreml import CoreMLRunner

            return CoreMLRunner(path, threads=threads)
        from edgevt.targets.onnx import OnnxRuntimeRunner

        return OnnxRuntimeRunner(path, threads=threads)
    if path.suffix in (".onnx", ".pt", ".tflite", ".mlpackage", ".engine") or "/" in str(
        model_or_artifact
    ):
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


def bench(
    artifacts: list[Path],
    *,
    threads: list[int] | tuple[int, ...] = (1,),
    batch: int = 1,
    warmup: int = 10,
    seconds: float = 3.0,
    iterations: int = 20,
    out: str | Path | None = None,
) -> list[tuple[Any, Path]]:
    """Host latency of each artifact at each thread count; one JSON result file per pair.

    Results land in ``out`` or in ``bench/`` of the artifact's own folder (its run directory,
    whose manifest records a ``bench`` stage). Each measurement runs in its own process.
    Returns (BenchResult, json path) pairs, grouped
    by thread count so each group's first entry is the baseline.
    """
    from edgevt.bench import benchmark_isolated, result_name

    for path in artifacts:
        if not path.exists():
            raise EdgevtError(f"{path} does not exist (edgevt bench takes exported artifacts).")
    bad = [n for n in threads if n < 1]
    if bad:
        raise EdgevtError(f"--threads {bad[0]}: thread counts must be >= 1.")
    results: list[tuple[Any, Path]] = []
    summaries: dict[Path, dict[str, Any]] = {}  # run directory -> its bench stage results
    for n in threads:
        for path in artifacts:
            result = benchmark_isolated(path, n, batch, warmup, seconds, iterations)
            folder = Path(out) if out is not None else path.parent / "bench"
            json_path = write_json(folder / result_name(path, n, batch), result.to_dict())
            summaries.setdefault(path.parent, {})[json_path.stem] = {
                k: getattr(result, k) for k in ("p50_ms", "p90_ms", "p99_ms", "batch")
            }
            results.append((result, json_path))
    for run_dir, summary in summaries.items():  # one manifest update per run directory
        if out is None and (run_dir / "manifest.json").is_file():
            run = RunDir(run_dir)
            recorded = run.manifest["stages"].get("bench", {}).get("results", {})
            run.record(
                "bench",
                {"artifacts": sorted(p.name for p in artifacts if p.parent == run_dir)},
                {"warmup": warmup, "seconds": seconds, "iterations": iterations},
                results={**recorded, **summary},
            )
    return results
