"""int8 from the command line on the real EfficientNet-Lite0 checkpoint and real images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EDGEVT = [sys.executable, "-m", "edgevt.cli"]
LITE0 = ["efficientnet_lite0", "--pretrained"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*EDGEVT, *args], capture_output=True, text=True, timeout=900)


def one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle in proc.stderr, proc.stderr


def test_bad_int8_input_gives_one_clear_error(tmp_path: Path, lite0_table: Path) -> None:
    from edgevt import api
    from edgevt.errors import EdgevtError

    out = tmp_path / "run"
    with pytest.raises(EdgevtError, match="--int8 needs calibration data"):
        api.export("efficientnet_lite0", pretrained=True, int8=True, out=out)
    with pytest.raises(EdgevtError, match="does not exist"):
        api.export("efficientnet_lite0", pretrained=True, int8=True, calib=tmp_path / "no", out=out)
    assert not out.exists()  # refused before any work
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgevtError, match="no images"):
        api.calibrate("efficientnet_lite0", pretrained=True, data=tmp_path / "empty")
    with pytest.raises(EdgevtError, match="made for 'efficientnet_lite0', not 'levit_128s'"):
        api.export("levit_128s", int8=True, calib_table=lite0_table, out=out)
    with pytest.raises(EdgevtError, match="unknown calibration method 'kl'"):
        api.calibrate("efficientnet_lite0", pretrained=True, data=tmp_path, method="kl")
    bad = run("calibrate", *LITE0, "--data", str(tmp_path), "--method", "kl", "-o", "x.json")
    assert bad.returncode == 2 and "invalid choice: 'kl'" in bad.stderr  # the CLI's one line


def test_tensorrt_int8_export_evaluates_and_obeys_rules(
    tmp_path: Path, lite0_table: Path, val_dir: Path
) -> None:
    out = tmp_path / "trt"
    proc = run(
        "export",
        *LITE0,
        "--target",
        "tensorrt",
        "--int8",
        "--calib-table",
        str(lite0_table),
        "-o",
        str(out),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["int8"]["details"]["tensorrt_rules"] == "ok"
    assert result["int8"]["check"]["cosine"] > 0.99
    for name in ("model.onnx", "model_int8.onnx", "calib.cache", "trtexec.sh", "calibration.json"):
        assert (out / name).is_file(), name
    assert "--onnx=model_int8.onnx --int8" in (out / "trtexec.sh").read_text()
    assert "engine to be built on the device" in proc.stdout
    assert run("check", str(out / "model_int8.onnx")).returncode == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"fuse", "export"} <= set(manifest["stages"])
    records = manifest["stages"]["export"]["results"]["artifacts"]
    assert [(r["target"], r["precision"]) for r in records] == [
        ("tensorrt", "fp32"), ("tensorrt", "int8")]  # fmt: skip
    assert set(records[1]["files"]) >= {"calib_cache", "trtexec"}

    evaluated = run(
        "eval", str(out / "model_int8.onnx"), "--data", str(val_dir), "--limit", "64", "--json"
    )
    assert evaluated.returncode == 0, evaluated.stderr
    summary = json.loads(evaluated.stdout.splitlines()[-1])
    assert summary["n"] == 64 and summary["top1"] > 60  # the real checkpoint, in int8


def test_onnx_runtime_int8_is_not_tensorrt_shaped(tmp_path: Path, lite0_table: Path) -> None:
    from edgevt import api

    out = tmp_path / "ort"
    api.export("efficientnet_lite0", pretrained=True, int8=True, calib_table=lite0_table, out=out,
               progress=False)  # fmt: skip
    checked = run("check", str(out / "model_int8.onnx"))
    assert checked.returncode == 1
    assert "zero point is uint8" in checked.stdout
    # MBConv residual adds have calibrated inputs and output, so they run in int8 too.
    assert quantized_adds(out / "model_int8.onnx") > 0

    config = tmp_path / "no_add.json"
    config.write_text(json.dumps({"op_type": {"add": None}}))
    out = tmp_path / "no_add"
    api.export("efficientnet_lite0", pretrained=True, int8=True, calib_table=lite0_table, out=out,
               quant_config=config, progress=False)  # fmt: skip
    assert quantized_adds(out / "model_int8.onnx") == 0


def quantized_adds(path: Path) -> int:
    """Adds whose inputs are all DequantizeLinear outputs (ORT fuses them to QLinearAdd)."""
    import onnx

    graph = onnx.load(str(path)).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return sum(
        n.op_type == "Add" and all(i in dequantized for i in n.input) for n in graph.node
    )
