"""The Python API: every CLI command is one of these functions.

>>> import edgevt
>>> out = edgevt.export("efficientnet_lite0", pretrained=True, out="runs/lite0")
>>> edgevt.evaluate(out.artifact, data="../shared/data/imagenet-val1000").top1

``export`` is orchestration only: validate -> fuse -> calibrate once -> the target's own
``export`` -> one check of every artifact against the fused model -> optional evaluation. What
a target does lives in its module under ``edgevt/targets/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgevt.bench import bench_artifacts as bench
from edgevt.data.imagenet import no_images_message, open_dataset
from edgevt.errors import EdgevtError, RuntimeRefusal
from edgevt.fuse import FuseReport
from edgevt.fused import (
    FUSED_FILE,
    FuseOutcome,
    check_images,
    fuse,
    load_fused,
    model_info,
    model_inputs,
    save_fused,
)
from edgevt.io import write_json
from edgevt.models import LoadedModel, get_entry, resolve_checkpoint
from edgevt.qat_stage import QatOutcome, qat
from edgevt.quant.table import CalibrationTable
from edgevt.run import RunDir, library_versions, undo_on_error
from edgevt.runners import open_runner
from edgevt.targets import DEFAULT_TARGET, get_target
from edgevt.targets.base import Artifact, ExportContext, Target, TargetOptions
from edgevt.validate.evaluate import EvalResult, compare_logits
from edgevt.validate.evaluate import evaluate as _evaluate
from edgevt.validate.significance import paired_top1

__all__ = [
    "FUSED_FILE", "ExportOutcome", "FuseOutcome", "QatOutcome", "bench", "calibrate",
    "evaluate", "export", "fuse", "load_fused", "open_runner", "qat", "save_fused",
]  # fmt: skip

DEFAULT_CALIB_SIZE = 512
# Below this cosine to the fused fp32 logits an artifact is broken, not merely noisy: int8 of
# random-weight LeViT, the noisiest case measured, keeps 0.96 (reports/random_weight_floor.md).
COSINE_FLOOR = 0.9


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
    if out is not None and str(out).endswith(("/", "\\")):
        raise EdgevtError(f"-o {out} names a folder; give the table's file, e.g. {out}table.json.")
    if not (50.0 < percentile < 100.0):
        raise EdgevtError("--percentile must lie between 50 and 100 (e.g. 99.99).")
    fused = fused or fuse(model, checkpoint, pretrained=pretrained, seed=seed)
    loaded = fused.loaded
    source = {**model_inputs(loaded), "data": str(data), "calib_size": calib_size}
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
    artifact: Path  # the fp32 artifact, the one every other precision is checked against
    run_dir: RunDir
    fuse_report: FuseReport
    weights: str
    artifacts: list[Artifact] = field(default_factory=list)  # fp32 first
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def check(self) -> dict[str, Any]:
        return self.artifacts[0].check

    @property
    def checks(self) -> dict[str, dict[str, Any]]:
        """File name -> its check against the fused model."""
        return {a.path.name: a.check for a in self.artifacts}

    @property
    def int8(self) -> Artifact | None:
        """The artifact with int8 activations (int8, or Core ML's w8a8), if one was asked for."""
        return next((a for a in self.artifacts if a.quantization is not None), None)

    def get(self, precision: str) -> Artifact:
        return next(a for a in self.artifacts if a.precision == precision)


def export(
    model: str,
    target: str = DEFAULT_TARGET,
    checkpoint: str | Path | None = None,
    *,
    pretrained: bool = False,
    out: str | Path | None = None,
    data: str | Path | None = None,
    eval_data: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
    int8: bool = False,
    precisions: list[str] | None = None,
    calib: str | Path | None = None,
    calib_table: str | Path | None = None,
    calib_size: int | None = None,
    method: str | None = None,
    quant_config: str | Path | None = None,
    max_drop: float | None = None,
    options: TargetOptions | dict[str, Any] | None = None,
    accept_degraded: bool = False,
    eval_workers: int = 1,
    **target_options: Any,
) -> ExportOutcome:
    """Fuse, export to ``target`` and check every artifact against the fused PyTorch model.

    Args:
        out: run directory; None means ``runs/<model>``.
        data: images for the fusion and export checks (see ``fuse``).
        eval_data: labelled images; if given, top-1/top-5 of the fp32 PyTorch reference and of
            every artifact are measured and written to ``eval.json``.
        limit: evaluate on at most this many images.
        int8: also write the int8 model (= ``precisions=["int8"]``; W8A8 on Core ML).
        precisions: more precisions than fp32 (see ``edgevt targets``).
        calib / calib_table: calibrate on these images, or reuse a table from ``calibrate``.
        calib_size / method: images to calibrate on (None: 512) and the range method (None:
            percentile 99.99).
        quant_config: JSON QuantConfig (None = the target's default).
        max_drop: accuracy budget in top-1 points; sensitive layers stay in float to meet it.
        accept_degraded: keep an artifact whose logits are NaN or below ``COSINE_FLOOR``
            cosine to the fused model (by default that export is an error and the file goes).
        options / target_options: the target's own options (``opset``, ``float_ops``,
            ``int8_io``, ``deployment_target``...; see ``edgevt targets``); None = default.
    """
    resolve_checkpoint(model, checkpoint, pretrained)  # bad weights fail before any write
    plugin = get_target(target)
    wanted = plugin.resolve_precisions(precisions, int8)
    if options is not None and target_options:
        raise EdgevtError("pass the target's options as options= or as keywords, not both.")
    opts = plugin.options(options if options is not None else target_options)
    plugin.validate(opts, wanted, max_drop)
    plugin.require()
    int8 = plugin.spec.int8_precision in wanted
    _check_applies(wanted, int8, calib, calib_table, calib_size, method, quant_config,
                   max_drop, eval_data, limit)  # fmt: skip
    if data is not None and not Path(data).is_dir():
        raise EdgevtError(no_images_message("--data", data))
    if eval_data is not None:  # unlabelled or missing evaluation data fails before any work
        open_dataset(eval_data).subset(limit)
    calib_size = DEFAULT_CALIB_SIZE if calib_size is None else calib_size
    table = _requested_table(model, int8, calib, calib_table, max_drop)
    config = None
    if quant_config is not None:
        from edgevt.quant.config import QuantConfig

        config = QuantConfig.load(quant_config)
    out = Path(out or Path("runs") / model)
    with undo_on_error(out):  # a refused export leaves the folder as it was
        run = RunDir(out)
        with run.locked():  # one writer at a time; stale temp files of killed runs go
            fused = fuse(
                model, checkpoint, pretrained=pretrained, data=data, out=run.path, seed=seed
            )
            if int8:
                table = _table_for(fused, table, calib, calib_size, method, progress)
                table.save(run / "calibration.json")
            images, described = check_images(fused.loaded.entry.preprocess, data)
            ctx = ExportContext(
                fused.model, model_info(fused.loaded, plugin.spec.name, True), run, wanted, images,
                table, config, Path(calib) if calib else None, calib_size, max_drop, progress,
            )  # fmt: skip
            artifacts = plugin.export(ctx, opts)
            _check(plugin, artifacts, fused.model, images, accept_degraded)
            _record_export(plugin, run, fused, artifacts, opts, table, described, max_drop)
            outcome = ExportOutcome(
                artifacts[0].path, run, fused.report, fused.loaded.weights, artifacts
            )
            if eval_data is not None:
                outcome.evals = _evaluate_run(
                    fused.loaded, [a.path for a in artifacts], run, eval_data, limit, progress,
                    workers=eval_workers, seed=seed,
                )  # fmt: skip
    return outcome


def _check_applies(wanted, int8, calib, calib_table, calib_size, method, quant_config, max_drop,
                   eval_data, limit) -> None:  # fmt: skip
    """Flags that would be silently ignored are errors: the user meant something by them.
    (--calib with --calib-table is not one: the table is reused, and the images serve the
    targets that range more tensors and --max-drop's sensitivity search.)"""
    if not int8 and (calib_size is not None or method is not None):
        raise EdgevtError("--calib-size and --method only apply with --int8 (and --calib).")
    if calib_table is not None and method is not None:
        raise EdgevtError(
            "--method applies when calibrating (--calib); a --calib-table keeps its own method."
        )
    if limit is not None and eval_data is None:
        raise EdgevtError("--limit applies to --eval-data; add --eval-data DIR or drop --limit.")
    if quant_config is not None and set(wanted) <= {"fp32", "fp16"}:
        raise EdgevtError("--quant-config applies to quantized precisions (--int8, w8, w8a8).")
    if max_drop is not None and not 0 <= max_drop <= 100:
        raise EdgevtError(f"--max-drop {max_drop}: a top-1 budget in points, 0 to 100.")


def _requested_table(
    model: str,
    int8: bool,
    calib: str | Path | None,
    calib_table: str | Path | None,
    max_drop: float | None,
) -> CalibrationTable | None:
    """The table to reuse, checked before any work (or None: calibrate on ``calib``)."""
    if int8 and calib is None and calib_table is None:
        raise EdgevtError(
            "--int8 needs calibration data: --calib DIR (any image folder, e.g. "
            "../shared/data/imagenet-sample1000) or --calib-table calib/NAME.json."
        )
    if not int8 and (calib or calib_table or max_drop is not None):
        raise EdgevtError("--calib, --calib-table and --max-drop only apply with --int8.")
    if calib_table is not None:
        table = CalibrationTable.load(calib_table)
        table.check_for(model)
        return table
    if calib is not None:  # a folder without images fails now, not after fusing
        from edgevt.quant.calibrate import calibration_batches

        next(iter(calibration_batches(get_entry(model).preprocess, calib, 1, progress=False)))
    return None


def _table_for(
    fused: FuseOutcome,
    table: CalibrationTable | None,
    calib: str | Path | None,
    calib_size: int,
    method: str | None,
    progress: bool,
) -> CalibrationTable:
    """The table given, or one measured on ``calib``; checked to cover the model's ops."""
    from edgevt.quant.calibrate import quantized_keys

    if table is None:
        table = calibrate(
            fused.loaded.entry.name, data=calib, calib_size=calib_size,
            method=method or "percentile", fused=fused, progress=progress,
        )  # fmt: skip
    table.check_for(
        fused.loaded.entry.name, quantized_keys(fused.model, fused.loaded.entry.preprocess)
    )
    table.check_weights(fused.model)
    return table


def _check(
    plugin: Target, artifacts: list[Artifact], model: torch.nn.Module, images, accept_degraded
) -> None:
    """The one check loop: every artifact against the fused model's logits. A grossly broken
    one (NaN, cosine below the floor) is removed and is an error: never a silent success."""
    with torch.no_grad():
        reference = model(images).numpy()
    for artifact in artifacts:
        try:
            artifact.check = plugin.check(artifact, images.numpy(), reference)
        except Exception as exc:  # the runtime refuses the file it was just given
            _remove_artifact(artifact)
            if isinstance(exc, RuntimeRefusal) and exc.__cause__ is not None:
                exc = exc.__cause__  # the runtime's own words, said as an export's
            elif isinstance(exc, EdgevtError):
                raise
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise EdgevtError(
                f"{artifact.path.name} was written but its runtime cannot run it ({reason}), "
                "so it was not kept — with int8, the calibration table likely holds extreme "
                "ranges: recalibrate (`edgevt calibrate`)."
            ) from exc
        cosine = artifact.check["cosine"]
        if accept_degraded or cosine >= COSINE_FLOOR:  # NaN compares False: refused too
            continue
        _remove_artifact(artifact)
        cause = (
            "the calibration table or quant config is likely broken: recalibrate "
            "(`edgevt calibrate`) or check --quant-config"
            if artifact.quantization is not None
            else "please report this model"
        )
        raise EdgevtError(
            f"{artifact.path.name} departs grossly from the fused fp32 model (cosine "
            f"{cosine:.4f}, floor {COSINE_FLOOR}), so it was not kept — {cause}; "
            "--accept-degraded keeps such a file anyway."
        )


def _remove_artifact(artifact: Artifact) -> None:
    """The file and the companions only it uses (not the shared calibration or config)."""
    import shutil

    shared = {"calibration", "config", "sensitivity"}
    paths = [artifact.path, *(p for k, p in artifact.files.items() if k not in shared)]
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _record_export(
    plugin: Target,
    run: RunDir,
    fused: FuseOutcome,
    artifacts: list[Artifact],
    opts: TargetOptions,
    table: CalibrationTable | None,
    described: str,
    max_drop: float | None,
) -> None:
    """One typed manifest record: every artifact with its target, precision, check and what
    its quantization honoured (the report and bundles read these, never file names)."""
    files = {a.path.stem: a.path for a in artifacts}
    for a in artifacts:
        files.update({k: p for k, p in a.files.items() if p.exists()})
    inputs = model_inputs(fused.loaded)
    if table is not None:
        files["calibration"] = run / "calibration.json"
        inputs["calibration_method"] = table.method
    settings = {
        "target": plugin.spec.name, "precisions": [a.precision for a in artifacts],
        "options": opts.to_dict(), "check_inputs": described, "max_drop": max_drop,
        "versions": plugin.versions(),
    }  # fmt: skip
    records = [a.record(plugin.spec.name) for a in artifacts]
    run.record("export", inputs, settings, files, {"artifacts": records})


def _evaluate_run(
    loaded: LoadedModel,
    artifacts: list[Path],
    run: RunDir,
    eval_data: str | Path,
    limit: int | None,
    progress: bool,
    workers: int = 1,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Score PyTorch fp32 and every artifact; write eval.json and record the stage."""
    evals = evaluate_against_reference(loaded, artifacts, eval_data, limit, progress, workers, seed)
    write_json(run / "eval.json", evals)
    run.record(
        "eval",
        {**model_inputs(loaded), "data": str(eval_data), "limit": limit},
        artifacts={"eval": run / "eval.json"},
        results={"evaluations": evals},  # a typed record: the report reads it from any stage
    )
    return evals


def evaluate_against_reference(
    loaded: LoadedModel,
    artifacts: Path | list[Path],
    data: str | Path,
    limit: int | None,
    progress: bool,
    workers: int = 1,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Top-1/top-5 of the unfused fp32 PyTorch model and of each artifact, and their agreement
    (``workers`` > 1: each evaluated in that many processes, see ``edgevt.shards``; ``seed``:
    of the model's random weights, which those processes rebuild)."""
    dataset = open_dataset(data).subset(limit)
    from edgevt.targets.pytorch import TorchRunner

    if workers > 1:
        from edgevt.shards import EvalJob, evaluate_sharded

        def score(model: str | Path, **options: Any) -> EvalResult:
            job = EvalJob(str(model), str(data), limit=limit, runner_options=options)
            return evaluate_sharded(job, workers, progress=progress)

        weights = {"checkpoint": str(loaded.checkpoint)} if loaded.checkpoint else {"seed": seed}
        ref = score(loaded.entry.name, **weights)
    else:

        def score(model: str | Path, **options: Any) -> EvalResult:
            return _evaluate(open_runner(model), dataset, progress=progress)

        ref = _evaluate(TorchRunner(loaded.model, model_info(loaded, "pytorch", False)), dataset,
                        progress=progress)  # fmt: skip
    results: dict[str, dict[str, Any]] = {"pytorch_fp32": ref.to_dict()}
    for artifact in [artifacts] if isinstance(artifacts, Path) else artifacts:
        art = score(artifact)
        results[artifact.name] = {
            **art.to_dict(),
            "vs_pytorch_fp32": {
                **compare_logits(ref.logits, art.logits),
                **paired_top1(ref.labels, ref.logits, art.logits),
            },
        }
    return results


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
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> EvalResult:
    """Top-1/top-5 of a zoo model or an exported artifact on labelled images (``seed``: of a
    zoo model's random weights, without a checkpoint).

    ``workers`` > 1 splits the images into shards of whole batches, evaluated by that many
    local processes (each loads the model once, with the cores shared out unless ``threads``
    is given); the merged result equals one process's, logits included.
    """
    if workers != 1:
        from edgevt.shards import EvalJob, evaluate_sharded

        job = EvalJob(
            str(model_or_artifact), str(data), labels=None if labels is None else str(labels),
            limit=limit, batch_size=batch_size, threads=threads,
            runner_options={"checkpoint": checkpoint, "pretrained": pretrained, "fused": fused,
                            "seed": seed},
        )  # fmt: skip
        return evaluate_sharded(job, workers, progress=progress)
    runner = open_runner(
        model_or_artifact, checkpoint, pretrained=pretrained, threads=threads, fused=fused,
        seed=seed,
    )
    dataset = open_dataset(data, labels=labels, synsets=runner.info.classes).subset(limit)
    return _evaluate(runner, dataset, batch_size=batch_size, progress=progress)


def profile(
    artifact: str | Path,
    threads: list[int] | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    device: str | None = None,
    core: str | None = None,
) -> tuple[Any, Path]:
    """Measure what each op type of an int8 file (or its run directory) costs in int8 on this
    host, and write the profile (``op_profile_<target>.json`` in the run, or ``out``). With
    an ARM ``device`` (``core``: another than its own), the cost is aarch64 instructions per
    inference on its emulated core instead (``op_profile_<target>_<device>_<core>.json``).

    Returns the ``OpProfile`` and the file it was written to; ``edgevt.op_profile.choose``
    turns it into the float op types of each ``--optimize`` mode.
    """
    from edgevt.targets import read_artifact_info, target_for_path

    path = Path(artifact)
    if not path.exists():
        raise EdgevtError(f"{path} does not exist; give an int8 file of a run, or the run.")
    run = path if path.is_dir() else path.parent
    if path.is_dir():
        found_targets = (target_for_path(p) for p in run.iterdir() if not p.name.startswith("."))
        targets = sorted({t.spec.name for t in found_targets if t is not None})
        if len(targets) != 1:
            raise EdgevtError(f"{run} holds files of {targets or 'no target'}; name one file.")
        target = targets[0]
    else:
        target = read_artifact_info(path).target
    emulated = ""
    if device is not None:
        from edgevt.aarch64 import core_for_device

        core = core_for_device(device, core)
        emulated = f"_{device}_{core}"
    elif core is not None:
        raise EdgevtError("core applies with an ARM device (device='raspberry-pi-5').")
    measured = get_target(target).op_profile(run, threads, progress, core=core)
    written = measured.save(Path(out) if out else run / f"op_profile_{target}{emulated}.json")
    return measured, written
