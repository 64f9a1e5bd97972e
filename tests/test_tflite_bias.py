"""A conv channel with near-zero weights and a large bias (a pruned or dead channel) keeps its
bias in the int8 .tflite: ai-edge-quantizer would clip it to int32 silently."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgevt import api
from tests.helpers import _build, tiny_model

DEAD = 3  # the channel whose weights are all but zero


def test_a_dead_channel_keeps_its_bias(tmp_path: Path, calib_dir: Path) -> None:
    pytest.importorskip("ai_edge_litert", reason="pip install edgevt[tflite]")
    from edgevt.debug import debug_artifact

    model = _build()
    with torch.no_grad():
        model.conv.weight[DEAD] *= 1e-7  # BatchNorm folds a bias of +3 onto ~1e-8 weights
        model.bn.bias[DEAD] = 3.0
    checkpoint = tmp_path / "dead.pth"
    torch.save(model.state_dict(), checkpoint)
    out = api.export(tiny_model(), "tflite", checkpoint=checkpoint, out=tmp_path / "run",
                     int8=True, calib=calib_dir, calib_size=8, progress=False)  # fmt: skip
    int8 = next(a for a in out.artifacts if a.precision == "int8")
    assert any("conv: 1 channel(s)" in n and "int32 bias" in n for n in int8.notes)
    result = debug_artifact(int8.path, calib_dir, limit=2, progress=False)
    conv_out = next(t for t in result.tensors if t.key == "conv:out")
    # clipped to int32, the bias came out as 0.01 instead of 3: an SQNR under 10 dB
    assert conv_out.sqnr_fp32_db > 25 and conv_out.cosine_local > 0.9999
    assert np.isfinite(result.logits["cosine_fp32"])


def test_per_tensor_weights_widen_their_one_scale(tmp_path: Path, calib_dir: Path) -> None:
    """A conv whose every weight is all but zero, quantized per tensor: its one scale widens."""
    pytest.importorskip("ai_edge_litert", reason="pip install edgevt[tflite]")
    from edgevt.quant.config import OpQuant, QuantConfig

    model = _build()
    with torch.no_grad():
        model.conv.weight *= 1e-7
        model.bn.bias.fill_(3.0)
    checkpoint = tmp_path / "tiny.pth"
    torch.save(model.state_dict(), checkpoint)
    config = tmp_path / "per_tensor.json"
    config.write_text(json.dumps(QuantConfig(OpQuant(weights="per_tensor")).to_dict()))
    out = api.export(tiny_model(), "tflite", checkpoint=checkpoint, out=tmp_path / "run",
                     int8=True, calib=calib_dir, calib_size=8, quant_config=config,
                     progress=False)  # fmt: skip
    int8 = next(a for a in out.artifacts if a.precision == "int8")
    assert any(n.startswith("conv: its per-tensor weight scale widened") for n in int8.notes)
    assert int8.check["cosine"] > 0.999
