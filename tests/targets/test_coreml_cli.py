"""`edgevt export --target coreml` end to end: packages, check, eval, bench, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("coremltools", reason="coreml extra not installed: pip install edgevt[coreml]")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgevt.cli", *args], capture_output=True,
                          text=True, timeout=900)  # fmt: skip


def test_export_eval_bench_coreml(tmp_path: Path, calib_dir: Path, val_dir: Path) -> None:
    out = tmp_path / "run"
    proc = _cli("export", "levit_128s", "--target", "coreml", "--int8", "--calib", str(calib_dir),
                "--calib-size", "8", "--eval-data", str(val_dir), "--limit", "4",
                "-o", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "model_w8a8.mlpackage" in proc.stdout and "ops int8" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    records = manifest["stages"]["export"]["results"]["artifacts"]
    checks = {r["file"]: r["check"] for r in records}
    assert {r["file"]: r["precision"] for r in records} == {
        "model.mlpackage": "fp32", "model_w8a8.mlpackage": "w8a8"}  # fmt: skip
    assert checks["model.mlpackage"]["cosine"] > 0.99999  # the fp32 bar
    assert checks["model.mlpackage"]["runtime"] in ("coreml", "mil-reference-interpreter")
    evals = json.loads((out / "eval.json").read_text())
    assert evals["model_w8a8.mlpackage"]["n"] == 4

    proc = _cli("bench", str(out / "model.mlpackage"), "--threads", "1", "--seconds", "0.2",
                "--warmup", "1", "--iterations", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(next((out / "bench").glob("*.json")).read_text())
    assert result["size_bytes"] > 10e6  # the package folder, not a directory entry


def test_coreml_errors_are_clear(tmp_path: Path, calib_dir: Path) -> None:
    proc = _cli("export", "levit_128s", "--target", "coreml", "--int8", "--calib", str(calib_dir),
                "--deployment-target", "iOS16", "-o", str(tmp_path / "x"))  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "iOS17" in proc.stderr
    proc = _cli("export", "levit_128s", "--target", "onnx", "--deployment-target", "iOS17")
    assert proc.returncode != 0 and "does not apply to --target onnx" in proc.stderr
    assert not (tmp_path / "x" / "model.mlpackage").exists()  # refused before any work
