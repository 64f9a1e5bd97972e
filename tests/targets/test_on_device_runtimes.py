"""What only a GPU or a Mac can check: a TensorRT engine built from edgevt's QDQ graph, and a
Core ML package run by Apple's runtime. Each skips, with its reason, anywhere else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgevt import api
from tests.helpers import tiny_model


@pytest.mark.gpu
def test_tensorrt_builds_an_engine_from_the_qdq_graph(tmp_path: Path, calib_dir: Path) -> None:
    pytest.importorskip("tensorrt", reason="pip install 'edgevt[tensorrt]'")
    out = api.export(tiny_model(), "tensorrt", int8=True, calib=calib_dir, calib_size=8,
                     out=tmp_path / "trt", progress=False)  # fmt: skip
    engine = out.int8.files.get("engine")
    assert engine is not None and engine.stat().st_size > 0


@pytest.mark.macos
def test_apple_runtime_reproduces_the_reference_interpreter(tmp_path: Path) -> None:
    pytest.importorskip("coremltools", reason="pip install 'edgevt[coreml]'")
    from edgevt.targets.coreml.runner import CoreMLRunner

    out = api.export(tiny_model(), "coreml", out=tmp_path / "coreml", progress=False)
    images = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with CoreMLRunner(out.artifact, backend="coreml") as apple:
        got = apple.infer(images)
    with CoreMLRunner(out.artifact, backend="mil-reference-interpreter") as interpreter:
        want = interpreter.infer(images)
    assert np.allclose(got, want, atol=1e-3)
