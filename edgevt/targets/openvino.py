"""OpenVINO: Intel CPUs (and GPUs/NPUs) through the OpenVINO runtime.

Each artifact is a folder ``model[_bf16|_int8].openvino/`` holding the IR pair ``model.xml`` +
``model.bin`` (what ``benchmark_app -m .../model.xml`` takes), with edgevt's ArtifactInfo in
the IR's ``rt_info``. bf16 is the fp32 IR run with OpenVINO's bf16 inference hint (CPUs with
AMX or AVX-512 BF16). fp32 and int8 are converted from edgevt's own ONNX: fp32 from the
fp32 export, int8 from a QDQ graph written by the ONNX target's writer from the
CalibrationTable (with OpenVINO's rules: 8-bit weights), so the table is honoured by
construction (OpenVINO turns each Q/DQ pair into a FakeQuantize and runs u8 kernels). The
runner compiles fp32 and int8 with ``INFERENCE_PRECISION_HINT=f32``: OpenVINO's CPU default on
AMX/AVX-512 BF16 machines is bf16, which is not the fp32 the file was checked as.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgevt.artifact import ArtifactInfo
from edgevt.errors import EdgevtError
from edgevt.io import atomic_dir
from edgevt.quant.rules import TargetRules
from edgevt.run import RunDir
from edgevt.targets import register_target
from edgevt.targets.base import (
    Artifact,
    ExportContext,
    Runner,
    Target,
    TargetOptions,
    TargetSpec,
    require_info,
)
from edgevt.targets.onnx import OnnxTarget, export_onnx

XML = "model.xml"
RT_INFO = ["edgevt", "info"]
# The ONNX target's QDQ layout (uint8 activations, int32 biases, calibrated element-wise ops so
# whole blocks stay int8) with full 8-bit weights: ONNX Runtime's 7 bits guard its saturating
# u8s8 kernels on CPUs without VNNI; OpenVINO's oneDNN kernels on the VNNI/AMX CPUs it targets
# do not saturate, and the 8th bit took the real Lite0 from 82.50 to 83.50 % top-1 (1000 images;
# reports/targets_lite0.md has the 8-bit run).
OPENVINO_RULES = TargetRules(
    name="openvino",
    signed_activations=False,
    quantize_bias=True,
    calibrated_elementwise=("Add", "Clip", "Relu"),
    int8_conv_needs_quantized_output=True,
)


def _openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise EdgevtError(
            "OpenVINO is not installed: pip install 'edgevt[openvino]'"
        ) from None
    return openvino


def write_ir(onnx_path: Path, info: ArtifactInfo, out: Path) -> Path:
    """Convert an ONNX file to the IR folder ``out`` (written whole or not at all)."""
    ov = _openvino()
    model = ov.convert_model(str(onnx_path))
    model.set_rt_info(info.to_json(), RT_INFO)
    with atomic_dir(out) as tmp:
        ov.save_model(model, str(tmp / XML), compress_to_fp16=False)
    return out


def read_ir_info(path: Path) -> ArtifactInfo | None:
    """The ArtifactInfo in an IR folder's ``model.xml``, read without OpenVINO installed."""
    import xml.etree.ElementTree as ElementTree

    xml = Path(path) / XML
    if not xml.is_file():
        raise EdgevtError(f"{path} holds no {XML}: not an OpenVINO IR folder; re-export it.")
    try:
        root = ElementTree.parse(xml).getroot()
    except ElementTree.ParseError as exc:
        raise EdgevtError(
            f"{xml} is not readable XML (corrupt or truncated?): {exc} — export it again."
        ) from exc
    node = root.find("rt_info/" + "/".join(RT_INFO))
    return None if node is None else ArtifactInfo.from_json(node.get("value", ""), str(path))


def _cpu_has_bf16() -> bool:
    capabilities = _openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "BF16" in capabilities


class OpenvinoRunner(Runner):
    """The OpenVINO runtime on the CPU; ``threads`` None = OpenVINO's default."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.threads = threads
        self.info = require_info(read_ir_info(self.path), self.path)
        self.hint = "bf16" if self.info.precision == "bf16" else "f32"

    def _activate(self) -> None:
        ov = _openvino()
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": self.hint, "PERFORMANCE_HINT": "LATENCY",
        }  # fmt: skip
        if self.threads is not None:
            config["INFERENCE_NUM_THREADS"] = self.threads
        try:
            self._compiled = ov.Core().compile_model(str(self.path / XML), "CPU", config)
        except RuntimeError as exc:  # a damaged .bin or .xml
            raise EdgevtError(
                f"OpenVINO cannot load {self.path} (corrupt or truncated?): "
                f"{str(exc).splitlines()[0]}; re-export it."
            ) from exc
        self._request = self._compiled.create_infer_request()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._request.infer([batch])[0], dtype=np.float32)

    def _deactivate(self) -> None:
        self._request = self._compiled = None

    def describe(self) -> dict[str, Any]:
        from importlib import metadata

        return {
            "backend": f"openvino {metadata.version('openvino')} (CPU, {self.hint} hint)",
            "artifact": str(self.path),
            "model": self.info.model,
            "precision": self.info.precision,
            "threads": self.threads,
        }


@register_target
class OpenvinoTarget(OnnxTarget):
    spec = TargetSpec(
        name="openvino",
        description="OpenVINO IR (model.xml + model.bin) from edgevt's ONNX; int8 from its QDQ",
        suffixes=(".openvino",),
        precisions=("fp32", "bf16", "int8"),
        extra="openvino",
        device_runtime="openvino",
    )
    requires = ("openvino", "onnx", "onnxruntime")
    supports_max_drop = True
    supports_debug = False  # IR files: ONNX's QDQ probe does not read them
    version_packages = ("openvino", "onnx")
    cli_options = ()
    ort_optimization = "none"  # the QDQ graph's own numerics: what OpenVINO's kernels follow

    def quantization_rules(self) -> TargetRules:
        return OPENVINO_RULES

    # Not the ONNX target's: no --opset here, and the check runs OpenVINO, not ONNX Runtime.
    validate = Target.validate
    check = Target.check

    def export(self, ctx: ExportContext, options: TargetOptions) -> list[Artifact]:
        """fp32 and int8 ONNX in a temp folder (the int8 one from the table, as the ONNX target
        writes it), each converted to an IR folder in the run directory; bf16 is the fp32 graph
        marked for OpenVINO's bf16 inference hint."""
        artifacts = []
        with tempfile.TemporaryDirectory(prefix=".openvino-onnx.", suffix=".tmp",
                                         dir=ctx.run.path) as tmp:  # fmt: skip
            onnx_ctx = dataclasses.replace(ctx, run=_Scratch(Path(tmp), ctx.run))
            fp32_onnx = export_onnx(ctx.model, ctx.info, Path(tmp) / "model.onnx")
            with ctx.stage(f"converting {ctx.info.model} to OpenVINO IR"):
                fp32 = write_ir(fp32_onnx, ctx.info, ctx.path(self.spec, "fp32"))
            artifacts.append(Artifact(fp32, "fp32"))
            if "bf16" in ctx.precisions:  # the fp32 graph, run with OpenVINO's bf16 hint
                bf16 = write_ir(fp32_onnx, ctx.info_for("bf16"), ctx.path(self.spec, "bf16"))
                notes = [] if _cpu_has_bf16() else [
                    "note: this CPU has no bf16 instructions, so OpenVINO ran the bf16 file's "
                    "check in f32; time and check it on a CPU with AMX or AVX-512 BF16."
                ]  # fmt: skip
                artifacts.append(Artifact(bf16, "bf16", notes=notes))
            if "int8" in ctx.precisions:  # the ONNX target's QDQ writer, under OpenVINO's rules
                qdq, _ = OnnxTarget.export_int8(self, onnx_ctx, fp32_onnx)
                graph = qdq.path.rename(qdq.path.with_suffix(".onnx"))  # the frontend wants .onnx
                int8 = write_ir(graph, ctx.info_for("int8"), ctx.path(self.spec, "int8"))
                qdq.path = int8
                artifacts.append(qdq)
        return artifacts

    def runner(self, path: Path, threads: int | None = None) -> Runner:
        return OpenvinoRunner(path, threads)

    def read_info(self, path: Path) -> ArtifactInfo | None:
        return read_ir_info(path)


class _Scratch(RunDir):
    """Where the ONNX target writes its int8 graph for conversion: the graph goes to the temp
    folder; the quant config and sensitivity it records go to the real run directory."""

    def __init__(self, tmp: Path, run: RunDir) -> None:
        self.path, self.run, self.manifest = tmp, run, run.manifest

    def __truediv__(self, name: str) -> Path:
        return self.path / name if name.startswith("model") else self.run / name
