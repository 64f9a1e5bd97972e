"""The ``onnx`` target: fp32 ONNX (opset >= 17, dynamic batch) and int8 QDQ for ONNX Runtime,
with the ONNX Runtime runner that every ONNX file (TensorRT's QDQ graph too) runs in here."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgevt.artifact import METADATA_KEY, ArtifactInfo
from edgevt.errors import EdgevtError, describe_os_error
from edgevt.io import atomic_path
from edgevt.quant.rules import TargetRules
from edgevt.targets import register_target
from edgevt.targets.base import (
    Artifact,
    ExportContext,
    Quantization,
    Runner,
    Target,
    TargetOptions,
    TargetSpec,
    require_info,
)

if TYPE_CHECKING:
    from torch import nn

DEFAULT_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "images", "logits"


def export_onnx(
    model: nn.Module, info: ArtifactInfo, path: str | Path, opset: int = DEFAULT_OPSET
) -> Path:
    """Export ``model`` (eval, fused) to ``path`` with a dynamic batch axis and ``info`` embedded
    as metadata; the file is checked with ``onnx.checker`` before it replaces ``path``."""
    import onnx
    import torch

    if opset < 17:
        raise EdgevtError(f"opset {opset} is too old: LayerNorm needs opset 17 or newer.")
    path = Path(path)
    size = info.preprocess.input_size
    # A batch-2 example: exporters may specialise a batch of 1 into the graph.
    example = torch.zeros(2, 3, size, size)
    model = model.eval()
    with atomic_path(path) as tmp:
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
        proto = onnx.load(str(tmp))
        meta = proto.metadata_props.add()
        meta.key, meta.value = METADATA_KEY, info.to_json()
        proto.producer_name = "edgevt"
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
    return path


def read_onnx_info(path: str | Path) -> ArtifactInfo | None:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except OSError as exc:  # unreadable (permissions), not damaged
        raise EdgevtError(describe_os_error(exc, path)) from exc
    except Exception as exc:  # protobuf raises DecodeError and others on a damaged file
        raise EdgevtError(
            f"{path} is not a readable ONNX model (corrupt or truncated?): {exc}; re-export it."
        ) from exc
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            return ArtifactInfo.from_json(prop.value, str(path))
    return None


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime on the CPU; ``threads`` None = ONNX Runtime's default (all cores)."""

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        info: ArtifactInfo | None = None,
        optimization: str | None = None,
    ) -> None:
        """``optimization`` None = what the artifact asks for (its metadata), else "all"."""
        super().__init__()
        self.path = Path(path)
        self.threads = threads
        self.info = require_info(info or read_onnx_info(self.path), self.path)
        self.optimization = optimization or self.info.extra.get("ort_optimization", "all")
        self.session = None

    def _activate(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        levels = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }
        options.graph_optimization_level = levels[self.optimization]
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(self.path), options, providers=["CPUExecutionProvider"]
        )

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]

    def _deactivate(self) -> None:
        self.session = None

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "backend": "onnxruntime",
            "onnxruntime": ort.__version__,
            "artifact": str(self.path),
            "size_bytes": os.path.getsize(self.path),
            "model": self.info.model,
            "precision": self.info.precision,
            "threads": self.threads or "default",
            "graph_optimization": self.optimization,
        }


# ONNX Runtime on CPUs: uint8 asymmetric activations, 7-bit int8 weights (depthwise keep 8; why:
# edgevt.quant.onnx_qdq), int32 biases, calibrated element-wise ops in int8 too.
ORT_RULES = TargetRules(
    name="onnx",
    signed_activations=False,
    weight_reduce_range=True,
    quantize_bias=True,
    calibrated_elementwise=("Add", "Clip", "Relu"),
    int8_conv_needs_quantized_output=True,
)
MAX_OPSET = 21  # the newest opset the pinned torch exporter and ONNX Runtime both take


@dataclass(frozen=True)
class OnnxOptions(TargetOptions):
    opset: int = DEFAULT_OPSET


@register_target
class OnnxTarget(Target):
    spec = TargetSpec(
        name="onnx",
        description="ONNX (opset 17+, dynamic batch), run by ONNX Runtime; int8 as QDQ",
        suffixes=(".onnx",),
        precisions=("fp32", "int8"),
        device_runtime="onnxruntime",
    )
    Options = OnnxOptions
    supports_max_drop = True
    supports_debug = True
    version_packages = ("onnx", "onnxruntime")
    cli_options = (
        ("opset", {"type": int, "metavar": "N",
                   "help": f"ONNX opset, {DEFAULT_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})"}),
    )  # fmt: skip
    #: what ONNX Runtime runs the int8 graph with: its fused kernels ("all") are this target's
    #: numerics; TensorRT's stand-in runs the exact QDQ graph ("none").
    ort_optimization: ClassVar[str] = "all"

    def quantization_rules(self) -> TargetRules:
        return ORT_RULES

    def int8_variant(self, run: Path, out: Path, table, config, info: ArtifactInfo) -> Path:
        from edgevt.quant.onnx_qdq import write_qdq_onnx

        fp32 = run / "model.onnx"
        if not fp32.is_file():
            raise EdgevtError(f"{run} has no model.onnx to quantize; export the run again.")
        write_qdq_onnx(fp32, out, table, config, self.quantization_rules(),
                       dataclasses.replace(info, precision="int8"))  # fmt: skip
        return out

    def debug_probe(self, path: Path, table, modules, details, threads: int | None = None):
        from edgevt.probes import QdqProbe

        return QdqProbe(path, table.ops, threads)

    def validate(self, options, precisions, max_drop) -> None:
        super().validate(options, precisions, max_drop)
        if not DEFAULT_OPSET <= options.opset <= MAX_OPSET:
            raise EdgevtError(
                f"--opset {options.opset}: edgevt exports opset {DEFAULT_OPSET} to {MAX_OPSET} "
                "(LayerNorm needs 17)."
            )

    def export(self, ctx: ExportContext, options: OnnxOptions) -> list[Artifact]:
        fp32 = export_onnx(ctx.model, ctx.info, ctx.path(self.spec, "fp32"), opset=options.opset)
        artifacts = [Artifact(fp32, "fp32")]
        if "int8" in ctx.precisions:
            artifacts.append(self.export_int8(ctx, fp32)[0])
        return artifacts

    def export_int8(self, ctx: ExportContext, fp32: Path) -> tuple[Artifact, Any]:
        """The QDQ model from the fp32 one, the table and the config (``--max-drop`` first
        chooses which sensitive ops stay in float)."""
        from edgevt.io import write_json
        from edgevt.quant.config import QuantConfig
        from edgevt.quant.onnx_qdq import write_qdq_onnx

        config = ctx.config or QuantConfig()
        rules = self.quantization_rules()
        details: dict[str, Any] = {}
        files = {"calibration": ctx.run / "calibration.json"}
        if ctx.max_drop is not None:
            from edgevt.quant.sensitivity import budget_config

            config, details["sensitivity"] = budget_config(ctx, rules, fp32)
            files["sensitivity"] = ctx.run / "sensitivity.json"
        files["config"] = write_json(ctx.run / "quant_config.json", config.to_dict())
        qdq = ctx.path(self.spec, "int8")
        info = ctx.info_for("int8", ort_optimization=self.ort_optimization)
        plan = write_qdq_onnx(fp32, qdq, ctx.table, config, rules, info)
        quant = Quantization(
            len(plan.quantized), plan.kept_float, plan.not_honoured,
            f"{len(plan.quantized)} ops int8"
            + (f", {len(plan.kept_float)} kept in float" if plan.kept_float else ""),
        )  # fmt: skip
        if "sensitivity" in details:
            from edgevt.quant.sensitivity import budget_summary

            quant.summary += budget_summary(details["sensitivity"])
        return Artifact(qdq, "int8", quant, files, details=details), plan

    def check(self, artifact: Artifact, images: np.ndarray, reference: np.ndarray) -> dict:
        from edgevt.validate.evaluate import compare_logits

        with OnnxRuntimeRunner(artifact.path) as runner:
            kernels = runner.infer(images)
        check = compare_logits(reference, kernels)
        if artifact.precision != "int8" or self.ort_optimization != "all":
            return check
        # ORT's int8 kernels vs the exact QDQ numerics (the saturation check)
        with OnnxRuntimeRunner(artifact.path, optimization="none") as runner:
            exact = compare_logits(runner.infer(images), kernels)
        check["kernels_vs_exact_cosine"] = exact["cosine"]
        if exact["cosine"] < 0.999:
            artifact.notes.append(
                f"warning: ONNX Runtime's int8 kernels depart from the exact QDQ numerics here "
                f"(cosine {exact['cosine']:.4f}; u8s8 kernels saturate on x86 CPUs without "
                "VNNI, and ORT's extended graph fusions round differently); accuracy measured "
                "with `edgevt eval` is what this machine gives."
            )
        return check

    def runner(self, path: Path, threads: int | None = None) -> Runner:
        return OnnxRuntimeRunner(path, threads=threads)

    def read_info(self, path: Path) -> ArtifactInfo | None:
        return read_onnx_info(path)
