"""OpenVINO target: IR folders from edgevt's ONNX, int8 from the same QDQ graph (so the same
numbers as ONNX Runtime's exact QDQ), the runner, eval, bench, a bundle run standalone, the
report; damaged IR folders named."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino", reason="openvino extra not installed: pip install edgevt[openvino]")

from edgevt import api  # noqa: E402
from edgevt.errors import EdgevtError  # noqa: E402
from edgevt.targets import read_artifact_info  # noqa: E402
from edgevt.targets.onnx import OnnxRuntimeRunner  # noqa: E402
from edgevt.targets.openvino import OpenvinoRunner, read_ir_info  # noqa: E402
from tests.helpers import real_images, tiny_model  # noqa: E402

STANDALONE = (
    "import runpy, sys; sys.modules['torch'] = None; sys.modules['edgevt'] = None; "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, calib_dir: Path) -> api.ExportOutcome:
    out = tmp_path_factory.mktemp("openvino") / "run"
    return api.export(tiny_model(), "openvino", out=out, int8=True, calib=calib_dir,
                      calib_size=16, progress=False)  # fmt: skip


def test_fp32_and_int8_ir_folders_with_their_info(exported) -> None:
    fp32, int8 = exported.artifacts
    assert fp32.path.name == "model.openvino" and int8.path.name == "model_int8.openvino"
    for a in (fp32, int8):
        assert sorted(p.name for p in a.path.iterdir()) == ["model.bin", "model.xml"]
        info = read_artifact_info(a.path)
        assert (info.target, info.precision, info.model) == ("openvino", a.precision, "tiny_cnn")
    assert fp32.check["cosine"] > 0.99999  # the f32 hint: not OpenVINO's bf16 default
    assert int8.quantization is not None and int8.quantization.quantized_ops > 0
    run = exported.run_dir.path
    assert not list(run.glob("*.onnx")) and not list(run.glob(".*.tmp"))
    record = json.loads((run / "manifest.json").read_text())["stages"]["export"]
    assert [a["target"] for a in record["results"]["artifacts"]] == ["openvino", "openvino"]


def test_int8_is_the_qdq_graph_of_the_table(exported, tmp_path: Path) -> None:
    """Converted from the QDQ ONNX the table gives under OpenVINO's rules: the IR computes what
    ONNX Runtime's exact QDQ numerics of that graph compute."""
    import dataclasses

    from edgevt.quant.config import QuantConfig
    from edgevt.quant.onnx_qdq import write_qdq_onnx
    from edgevt.quant.table import CalibrationTable
    from edgevt.targets.openvino import OPENVINO_RULES

    fp32 = api.export(tiny_model(), "onnx", out=tmp_path / "onnx", progress=False).artifact
    info = dataclasses.replace(read_artifact_info(fp32), precision="int8")
    table = CalibrationTable.load(exported.run_dir.path / "calibration.json")
    qdq = tmp_path / "qdq.onnx"
    write_qdq_onnx(fp32, qdq, table, QuantConfig(), OPENVINO_RULES, info)
    x = real_images("tiny_cnn", 8).numpy()
    with OpenvinoRunner(exported.int8.path, threads=1) as ov:
        ir = ov.infer(x)
    with OnnxRuntimeRunner(qdq, optimization="none") as ort:
        exact = ort.infer(x)
    cos = (ir * exact).sum(1) / (np.linalg.norm(ir, axis=1) * np.linalg.norm(exact, axis=1))
    assert cos.min() > 0.9999, cos


def test_eval_bench_bundle_and_report(exported, val_dir: Path, tmp_path: Path) -> None:
    run = exported.run_dir.path
    result = api.evaluate(exported.int8.path, val_dir, limit=8, progress=False)
    assert result.n == 8
    timed = api.bench([exported.artifact], threads=[1], seconds=0.05, iterations=2, warmup=1)
    assert timed[0][0].p50_ms > 0
    from edgevt.bundle import make_bundle

    bundle = make_bundle(run, "intel-nuc", tmp_path / "nuc", samples=2, data=val_dir)
    assert sorted(p.name for p in (bundle.path / "models").iterdir()) == [
        "model.openvino", "model_int8.openvino",
    ]  # fmt: skip
    ran = subprocess.run(
        [sys.executable, "-c", STANDALONE, str(bundle.path / "run_bundle.py"), "--threads", "1",
         "--seconds", "0.05", "--iterations", "2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    results = next((bundle.path / "results").glob("intel-nuc-*.json"))
    rows = json.loads(results.read_text())["results"]
    assert {r["artifact"] for r in rows} == {"model.openvino", "model_int8.openvino"}
    assert all(r["check"]["passed"] and r["backend"].startswith("openvino") for r in rows)
    from edgevt.report import collect, write_report

    report = collect([run], [results])
    md = write_report(report, tmp_path / "report", "openvino")["markdown"].read_text()
    assert "model_int8.openvino" in md and "intel-nuc" in md


def test_info_reads_without_openvino(exported, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert read_ir_info(exported.artifact).precision == "fp32"


def test_a_damaged_ir_folder_is_named(exported, tmp_path: Path) -> None:
    broken = tmp_path / "model.openvino"
    shutil.copytree(exported.artifact, broken)
    (broken / "model.bin").write_bytes(b"\0" * 10)
    with pytest.raises(EdgevtError, match="corrupt or truncated"):
        OpenvinoRunner(broken).infer(real_images("tiny_cnn", 1).numpy())
    xml = broken / "model.xml"
    xml.write_text(xml.read_text()[:200])
    with pytest.raises(EdgevtError, match="not readable XML"):
        read_ir_info(broken)
    shutil.rmtree(broken)
    broken.mkdir()
    (broken / "notes.txt").write_text("x")
    with pytest.raises(EdgevtError, match="not an OpenVINO IR folder"):
        read_artifact_info(broken)


def test_int8_honours_max_drop(tmp_path: Path, calib_dir: Path) -> None:
    """--max-drop works as for the ONNX target (the same QDQ graph)."""
    out = api.export(tiny_model(), "openvino", out=tmp_path / "run", int8=True, calib=calib_dir,
                     calib_size=8, max_drop=100.0, progress=False)  # fmt: skip
    assert "sensitivity" in out.int8.details
    assert (tmp_path / "run" / "sensitivity.json").is_file()


def test_bf16_is_the_fp32_graph_run_with_the_bf16_hint(tmp_path: Path) -> None:
    out = api.export(tiny_model(), "openvino", out=tmp_path / "run", precisions=["bf16"],
                     progress=False)  # fmt: skip
    bf16 = out.get("bf16")
    assert bf16.path.name == "model_bf16.openvino"
    assert read_artifact_info(bf16.path).precision == "bf16"
    runner = OpenvinoRunner(bf16.path)
    assert runner.hint == "bf16" and "bf16 hint" in runner.describe()["backend"]
    # bf16 keeps 8 mantissa bits: close to fp32, and not bit-identical on a bf16 CPU
    assert 0.999 < bf16.check["cosine"]
    assert OpenvinoRunner(out.artifact).hint == "f32"
