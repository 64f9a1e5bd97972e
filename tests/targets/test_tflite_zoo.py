"""Every zoo model converts to TFLite and reproduces its fused PyTorch logits on real images
(large models in the slow suite; CvT-W24 is checked in fp16 as well, the precision it ships in)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("litert_torch", reason="tflite extra not installed: pip install edgevt[tflite]")
pytest.importorskip("ai_edge_quantizer", reason="pip install edgevt[tflite]")

from edgevt import api  # noqa: E402
from edgevt.fused import model_info  # noqa: E402
from edgevt.models import list_models  # noqa: E402
from edgevt.targets import tflite  # noqa: E402
from tests.helpers import real_images  # noqa: E402

ALREADY_COVERED = {"levit_128s"}  # test_tflite.py converts it at every precision
DEFAULT_SUITE = {"efficientnet_lite0"}  # the others convert in the slow suite (-m slow)


@pytest.mark.parametrize(
    "name",
    [n if n in DEFAULT_SUITE else pytest.param(n, marks=pytest.mark.slow)
     for n in list_models() if n not in ALREADY_COVERED],
)
def test_zoo_model_converts(name: str, tmp_path: Path) -> None:
    fused = api.fuse(name)
    images = real_images(name, 2)
    reference = fused.model(images).detach().numpy()
    info = model_info(fused.loaded, "tflite", True)
    fp32 = tflite.convert_fp32(fused.model, images[:1], info, tmp_path / "model.tflite")
    outputs = {"fp32": fp32}
    if name == "cvt_w24":
        outputs["fp16"] = tmp_path / "model_fp16.tflite"
        tflite.quantize(fp32, outputs["fp16"], "fp16", info)
    del fused
    for precision, path in outputs.items():
        with tflite.LiteRTRunner(path, threads=2) as runner:
            logits = runner.infer(images.numpy())
        cos = (logits * reference).sum(1) / (
            np.linalg.norm(logits, axis=1) * np.linalg.norm(reference, axis=1)
        )
        assert cos.min() > (0.99999 if precision == "fp32" else 0.9999), (precision, cos)
