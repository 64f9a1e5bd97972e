"""`--target coreml` through the API end to end: packages, checks, eval, bench, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("coremltools", reason="coreml extra not installed: pip install edgevt[coreml]")

from edgevt import api  # noqa: E402
from edgevt.errors import EdgevtError  # noqa: E402
from tests.helpers import tiny_model  # noqa: E402


def test_export_eval_bench_coreml(tmp_path: Path, calib_dir: Path, val_dir: Path) -> None:
    out = tmp_path / "run"
    done = api.export(tiny_model(), "coreml", int8=True, calib=calib_dir, calib_size=8,
                      eval_data=val_dir, limit=4, out=out, progress=False)  # fmt: skip
    assert done.int8.path.name == "model_w8a8.mlpackage"
    assert "ops int8" in done.int8.quantization.summary
    manifest = json.loads((out / "manifest.json").read_text())
    records = manifest["stages"]["export"]["results"]["artifacts"]
    checks = {r["file"]: r["check"] for r in records}
    assert {r["file"]: r["precision"] for r in records} == {
        "model.mlpackage": "fp32", "model_w8a8.mlpackage": "w8a8"}  # fmt: skip
    assert checks["model.mlpackage"]["cosine"] > 0.99999  # the fp32 bar
    assert checks["model.mlpackage"]["runtime"] in ("coreml", "mil-reference-interpreter")
    evals = json.loads((out / "eval.json").read_text())
    assert evals["model_w8a8.mlpackage"]["n"] == 4

    (result, path), = api.bench([out / "model.mlpackage"], seconds=0.05, iterations=2, warmup=1)
    assert result.size_bytes > 20e3 and path.parent == out / "bench"  # a package folder


def test_coreml_errors_are_clear(tmp_path: Path, calib_dir: Path) -> None:
    with pytest.raises(EdgevtError, match="iOS17"):
        api.export(tiny_model(), "coreml", int8=True, calib=calib_dir,
                   deployment_target="iOS16", out=tmp_path / "x")  # fmt: skip
    with pytest.raises(EdgevtError, match="does not apply to --target onnx"):
        api.export(tiny_model(), "onnx", deployment_target="iOS17", out=tmp_path / "x")
    assert not (tmp_path / "x").exists()  # refused before any work
