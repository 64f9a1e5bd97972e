"""`--max-drop` on TFLite and Core ML: the sensitivity search runs in QuantSim with the
target's own rules, and the target's int8 file keeps in float exactly the ops it chose."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgevt import api
from edgevt.quant import sensitivity
from edgevt.quant.sensitivity import SensitivityResult
from tests.helpers import tiny_model

CHOSEN = SensitivityResult(
    ranking=[("conv2", 1.0), ("head", 0.4), ("conv", 0.1)], kept_float=["conv2"],
    drop_all_int8=2.0, drop_chosen=0.0, images=8, measure="top-1 disagreement with fp32",
)  # fmt: skip


@pytest.mark.parametrize("target", ["tflite", "coreml"])
def test_max_drop_keeps_the_ops_it_chose_in_float(
    target: str, tmp_path: Path, calib_dir: Path, monkeypatch
) -> None:
    from edgevt.targets import get_target

    plugin = get_target(target)
    if plugin.available() is not None:
        pytest.skip(plugin.available())
    seen = {}

    def search(model, table, config, rules, data, preprocess, max_drop, **kwargs):
        seen.update(rules=rules.name, max_drop=max_drop, graph=Path(kwargs["fp32_onnx"]).suffix)
        return CHOSEN

    monkeypatch.setattr(sensitivity, "choose_float_layers", search)
    run = tmp_path / "budget"
    out = api.export(tiny_model(), target, out=run, int8=True, calib=calib_dir, calib_size=8,
                     max_drop=0.5, progress=False)  # fmt: skip
    # the target's own rules, on the graph QAT simulates too
    assert seen == {"rules": target, "max_drop": 0.5, "graph": ".onnx"}
    assert "--max-drop: all-int8 2.00 pt -> 0.00 pt" in out.int8.quantization.summary
    assert json.loads((run / "sensitivity.json").read_text())["kept_float"] == ["conv2"]
    assert json.loads((run / "quant_config.json").read_text())["module_name"] == {"conv2": None}
    # the file keeps that op in float: fewer int8 ops than the same table without a budget
    plain = api.export(tiny_model(), target, out=tmp_path / "plain", int8=True,
                       calib_table=run / "calibration.json", progress=False)  # fmt: skip
    assert out.int8.quantization.quantized_ops < plain.int8.quantization.quantized_ops
