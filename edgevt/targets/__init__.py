"""The declarative table of targets that the CLI, the docs and `open_runner` all read.

A target is one module with an exporter and a runner. Targets that need an optional extra
are listed with what to install, so a missing backend is reported, never a crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgevt.errors import EdgevtError


@dataclass(frozen=True)
class TargetSpec:
    name: str
    suffix: str
    description: str
    precisions: tuple[str, ...]
    extra: str | None = None  # pip extra that installs its runtime; None = core dependency
    needs_gpu: bool = False


TARGETS: dict[str, TargetSpec] = {
    "onnx": TargetSpec(
        "onnx",
        ".onnx",
        "ONNX (opset 17+, dynamic batch), run by ONNX Runtime; int8 as QDQ",
        ("fp32", "int8"),
    ),
    "tflite": TargetSpec(
        "tflite",
        ".tflite",
        "TFLite/LiteRT (ARM CPUs, Android) via litert-torch; int8 from the CalibrationTable",
        ("fp32", "fp16", "w8", "int8"),
        extra="tflite",
    ),
    "coreml": TargetSpec(
        "coreml",
        ".mlpackage",
        "Core ML ML Program (Apple); on Linux validated and run by edgevt's MIL interpreter",
        ("fp32", "fp16", "w8", "w8a8"),
        extra="coreml",
    ),
    "tensorrt": TargetSpec(
        "tensorrt",
        ".onnx",
        "TensorRT (Jetson): QDQ ONNX + trtexec script + calib cache; engine where TRT runs",
        ("fp32", "fp16", "int8"),
        extra="tensorrt",
        needs_gpu=True,
    ),
}


def get_target(name: str) -> TargetSpec:
    if name not in TARGETS:
        raise EdgevtError(f"unknown target {name!r}; available here: {', '.join(TARGETS)}.")
    return TARGETS[name]


def target_for_artifact(path: Path) -> TargetSpec | None:
    return next((t for t in TARGETS.values() if path.name.endswith(t.suffix)), None)


def artifact_name(spec: TargetSpec, precision: str) -> str:
    """``model.onnx``, ``model_int8.onnx``, ``model_fp16.tflite``: one name scheme for all."""
    return f"model{spec.suffix}" if precision == "fp32" else f"model_{precision}{spec.suffix}"


CALIBRATED_PRECISIONS = ("int8", "w8a8")  # int8 activations: these need a CalibrationTable


def needs_calibration(precisions: list[str]) -> bool:
    return any(p in CALIBRATED_PRECISIONS for p in precisions)


def resolve_precisions(spec: TargetSpec, precisions: list[str] | None, int8: bool) -> list[str]:
    """fp32 first (every target exports it: it is what the others are checked against)."""
    wanted = ["fp32", *(precisions or []), *(["int8"] if int8 else [])]
    if spec.name == "coreml":  # Core ML calls full int8 W8A8; --int8 means it there too
        wanted = ["w8a8" if p == "int8" else p for p in wanted]
    unknown = [p for p in wanted if p not in spec.precisions]
    if unknown:
        raise EdgevtError(
            f"target {spec.name} does not offer {', '.join(unknown)}; it offers "
            f"{', '.join(spec.precisions)}."
        )
    return list(dict.fromkeys(wanted))
