"""ONNX export (fp32, opset >= 17, dynamic batch) and the ONNX Runtime runner."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgevt.artifact import METADATA_KEY, ArtifactInfo
from edgevt.errors import EdgevtError
from edgevt.io import atomic_path
from edgevt.targets.base import Runner

DEFAULT_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "images", "logits"


def export_onnx(
    model: nn.Module, info: ArtifactInfo, path: str | Path, opset: int = DEFAULT_OPSET
) -> Path:
    """Export ``model`` (eval, fused) to ``path`` with a dynamic batch axis and ``info`` embedded
    as metadata; the file is checked with ``onnx.checker`` before it replaces ``path``."""
    import onnx

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

    proto = onnx.load(str(path), load_external_data=False)
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            return ArtifactInfo.from_json(prop.value)
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
        found = info or read_onnx_info(self.path)
        if found is None:
            raise EdgevtError(
                f"{self.path} carries no edgevt metadata (preprocessing, classes); re-export it "
                "with `edgevt export`, or pass --model ZOO_NAME to use that model's preprocessing."
            )
        self.info = found
        self.optimization = optimization or found.extra.get("ort_optimization", "all")
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
