"""Calibration tables and quant configs are checked when they are read: ranges no target can
turn into a working int8 model are refused, not exported (they used to give NaN logits or a
model unrelated to fp32, and exit 0)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from edgevt.errors import EdgevtError
from edgevt.quant.config import QuantConfig
from edgevt.quant.table import FORMAT, CalibrationTable


def table(**activations) -> dict:
    acts = activations or {"a:in0": {"min": -1.0, "max": 1.0}}
    return {"format": FORMAT, "model": "m", "method": "minmax", "activations": acts,
            "weight_amax": {"a": [0.5]}}  # fmt: skip


@pytest.mark.parametrize(
    "data,message",
    [
        ([1, 2], "a JSON list, not an object"),
        (table(**{"a:in0": {"min": -math.inf, "max": 1.0}}), "is not finite"),
        (table(**{"a:in0": {"min": math.nan, "max": 1.0}}), "is not finite"),
        (table(**{"a:in0": {"min": 2.0, "max": 1.0}}), "inverted"),
        (table(**{"a:in0": {"min": 0.0, "max": 0.0}}), "every activation range is zero"),
        ({**table(), "weight_amax": {"a": [-0.5]}}, "negative or non-finite"),
        ({**table(), "activations": {"a:in0": {"min": "x", "max": 1}}}, "damaged"),
        ({**table(), "activations": {"a:in0": {"lo": 0}}}, "damaged"),
    ],
)
def test_a_broken_table_is_refused_on_load(tmp_path: Path, data, message: str) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))  # json writes NaN / Infinity, as a hand edit might
    with pytest.raises(EdgevtError, match=message):
        CalibrationTable.load(path)


def test_a_good_table_loads(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps(table(**{"a:in0": {"min": 0.0, "max": 0.0},
                                        "b:in0": {"min": -1.0, "max": 2.0}})))  # fmt: skip
    assert CalibrationTable.load(path).activations["b:in0"].max == 2.0  # one dead tensor is ok


def test_a_quant_config_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text("[]")
    with pytest.raises(EdgevtError, match="is a JSON object .* not a list"):
        QuantConfig.load(path)
