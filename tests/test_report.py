"""`edgevt report` on a real run: tables, device results ingested, and an HTML page that
renders in real headless Chromium with its plot visible."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EDGEVT = [sys.executable, "-m", "edgevt.cli"]
PARETO_RED, POINT_BLUE = (214, 39, 40), (31, 119, 180)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*EDGEVT, *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def report_dir(lite0_int8_run: Path, tmp_path_factory) -> Path:
    from edgevt import api
    from edgevt.bundle import make_bundle

    api.bench([lite0_int8_run / "model.onnx", lite0_int8_run / "model_int8.onnx"], seconds=0.2,
              iterations=3, warmup=1)  # fmt: skip
    bundle = make_bundle(lite0_int8_run, "raspberry-pi-5",
                         tmp_path_factory.mktemp("bundle") / "pi5", samples=2).path  # fmt: skip
    ran = subprocess.run(
        [sys.executable, str(bundle / "run_bundle.py"), "--threads", "1", "--seconds", "0.2",
         "--iterations", "3"], capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    device_json = next((bundle / "results").glob("*.json"))
    out = tmp_path_factory.mktemp("report") / "lite0"
    proc = run("report", str(lite0_int8_run), "--device-results", str(device_json), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_report_tables_hold_accuracy_latency_and_device_results(report_dir: Path) -> None:
    md = (report_dir / "report.md").read_text()
    data = json.loads((report_dir / "report.json").read_text())
    rows = {r["artifact"]: r for r in data["rows"]}
    assert set(rows) == {"PyTorch (unfused)", "model.onnx", "model_int8.onnx"}
    assert rows["model_int8.onnx"]["precision"] == "int8" and rows["model_int8.onnx"]["n"] == 32
    assert 0 < rows["model_int8.onnx"]["cosine"] <= 1
    # lost / won against fp32 on the same 32 images account for the top-1 difference exactly.
    int8, fp32 = rows["model_int8.onnx"], rows["PyTorch (unfused)"]
    assert int8["won"] - int8["lost"] == round((int8["top1"] - fp32["top1"]) * 32 / 100)
    assert 0 < int8["p_value"] <= 1
    assert f"| {int8['lost']} / {int8['won']} (p=" in md and "McNemar" in md
    places = {(t["artifact"], t["where"]) for t in data["timings"]}
    # The bundle ran on this x86 host, not on a Pi: the report says so.
    machine = platform.machine()
    pi = (
        "raspberry-pi-5"
        if machine in ("aarch64", "arm64")
        else f"raspberry-pi-5 (ran on {machine})"
    )
    assert places == {(a, w) for a in ("model.onnx", "model_int8.onnx")
                      for w in ("host", pi)}  # fmt: skip
    fp32_host = next(
        t for t in data["timings"] if t["where"] == "host" and t["precision"] == "fp32"
    )
    assert fp32_host["speedup"] == pytest.approx(1.0)
    assert f"| lite0 | model_int8.onnx | int8 | {pi} |" in md
    assert "percentile on 16 images" in md
    assert sum(p["pareto"] for p in data["points"]) >= 1 and len(data["points"]) == 2


def test_html_report_renders_in_headless_chromium(report_dir: Path, tmp_path: Path) -> None:
    page = (report_dir / "report.html").read_text()
    assert page.count("<circle") == 2 and "http" not in page.replace(
        "http://www.w3.org/2000/svg", ""
    )  # self-contained: nothing to fetch
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
         "--window-size=1200,900", f"--screenshot={shot}", (report_dir / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shot.is_file(), proc.stderr
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)

    def count(color: tuple[int, int, int]) -> int:
        return int((np.abs(pixels - np.array(color)).sum(1) < 30).sum())

    # The plot is drawn: its points are on screen (red on the Pareto front, blue off it).
    # (Two points may overlap when fp32 and int8 time alike; the front is drawn on top.)
    assert count(PARETO_RED) > 100 and count(PARETO_RED) + count(POINT_BLUE) > 100


def test_report_reads_precision_target_and_float_ops_from_the_artifacts(
    tmp_path: Path, calib_dir: Path
) -> None:
    """A run with no evaluation: each row's precision and target come from the file's own
    info (a w8a8 package was labelled fp32 and "mlpackage" when guessed from its name), and the
    ops Core ML and TFLite keep in float reach the calibration section (they were read from an
    ONNX-only stage record)."""
    pytest.importorskip("coremltools")
    pytest.importorskip("ai_edge_quantizer")
    from edgevt import api
    from edgevt.report import collect, write_report
    from tests.helpers import tiny_model

    tiny = tiny_model()
    config = tmp_path / "head_float.json"
    config.write_text(json.dumps({"module_name": {"head": None}}))
    coreml = api.export(tiny, "coreml", int8=True, calib=calib_dir, calib_size=8,
                        quant_config=config, out=tmp_path / "coreml", progress=False)  # fmt: skip
    tflite = api.export(tiny, "tflite", int8=True, calib=calib_dir, calib_size=8,
                        float_ops=["FULLY_CONNECTED"], out=tmp_path / "tflite", progress=False)
    trt = api.export(tiny, "tensorrt", int8=True, calib=calib_dir, calib_size=8,
                     out=tmp_path / "trt", progress=False)  # fmt: skip
    for run in (coreml.run_dir.path, tflite.run_dir.path):
        assert not (run / "eval.json").exists() and not (run / "bench").exists()
    report = collect([coreml.run_dir.path, tflite.run_dir.path, trt.run_dir.path])
    rows = {(r.run, r.artifact): r for r in report.rows}
    w8a8 = rows[("coreml", "model_w8a8.mlpackage")]
    assert (w8a8.target, w8a8.precision) == ("coreml", "w8a8")
    assert (rows[("tflite", "model_int8.tflite")].target, rows[("tflite", "model.tflite")]
            .precision) == ("tflite", "fp32")  # fmt: skip
    floats = {c["run"]: c["float_ops"] for c in report.calibration}
    assert floats["coreml"] == ["head"] and floats["tflite"] == ["FULLY_CONNECTED"]
    md = write_report(report, tmp_path / "report", "t")["markdown"].read_text()
    assert "kept in float: head" in md and "kept in float: FULLY_CONNECTED" in md
    # the target says what its host timing is (TensorRT's: an ONNX Runtime stand-in)
    assert rows[("trt", "model_int8.onnx")].target == "tensorrt"
    assert "TensorRT-target int8 models are timed on the host" in md
