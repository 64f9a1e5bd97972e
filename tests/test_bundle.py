"""Device bundles: built from a real run, run here by the same standalone script a device runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgevt.bundle import make_bundle
from edgevt.errors import EdgevtError

EDGEVT = [sys.executable, "-m", "edgevt.cli"]
# The bundle runner must work with numpy and a runtime only: make edgevt and torch unimportable.
STANDALONE = (
    "import runpy, sys; sys.modules['torch'] = None; sys.modules['edgevt'] = None; "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*EDGEVT, *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def lite0_run(lite0_int8_run: Path) -> Path:
    return lite0_int8_run


def test_raspberry_pi_bundle_runs_here_standalone(lite0_run: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "pi5"
    proc = run("bundle", str(lite0_run), "--device", "raspberry-pi-5", "-o", str(bundle),
               "--samples", "4", "--eval-images", "40")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "40 labelled images to score" in proc.stdout
    assert sorted(p.name for p in (bundle / "models").iterdir()) == [
        "model.onnx",
        "model_int8.onnx",
    ]
    readme = (bundle / "README.md").read_text()
    assert "ssh" in readme and "python3 run_bundle.py" in readme

    ran = subprocess.run(
        [sys.executable, "-c", STANDALONE, str(bundle / "run_bundle.py"), "--threads", "1",
         "--seconds", "0.2", "--iterations", "3"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    results = json.loads(next((bundle / "results").glob("raspberry-pi-5-*.json")).read_text())
    assert results["format"] == "edgevt.device-results/1" and results["device"] == "raspberry-pi-5"
    by_name = {r["artifact"]: r for r in results["results"]}
    assert set(by_name) == {"model.onnx", "model_int8.onnx"}
    for row in by_name.values():
        assert row["check"]["passed"] and row["check"]["cosine"] > 0.9999
        assert 0 < row["p50_ms"] <= row["p90_ms"]
    assert by_name["model_int8.onnx"]["precision"] == "int8"
    # the accuracy run: the same files and runtime as the host's, so image for image the same
    for row in by_name.values():
        scored = row["accuracy"]
        assert scored["n"] == 40 and scored["agreement_host"] == 1.0
        assert (scored["lost"], scored["won"], scored["p_value"]) == (0, 0, 1.0)
        assert scored["top1"] == pytest.approx(scored["host_top1"]) and scored["top1"] > 50
    assert by_name["model.onnx"]["accuracy"]["agreement_host_fp32"] == 1.0
    from edgevt.report import collect, write_report

    report = collect([lite0_run], [next((bundle / "results").glob("*.json"))])
    assert {a["artifact"] for a in report.device_accuracy} == {"model.onnx", "model_int8.onnx"}
    md = write_report(report, tmp_path / "report", "pi5")["markdown"].read_text()
    assert "## Accuracy on devices" in md and "gap beyond noise" not in md


def test_files_of_one_name_in_two_formats_keep_their_own_expectations(
    tmp_path: Path, calib_dir: Path, val_dir: Path
) -> None:
    """A Pi 5 bundle holds model_int8.onnx and model_int8.tflite: each is checked against its
    own host logits and scored against its own host answers (keys by file name, not stem), and
    "agreement with the host's fp32" means the same runtime's fp32 file."""
    from edgevt import api
    from tests.helpers import tiny_model

    for target in ("onnx", "tflite"):
        api.export(tiny_model(), target, out=tmp_path / "run", int8=True, calib=calib_dir,
                   calib_size=8, progress=False)  # fmt: skip
    bundle = make_bundle(tmp_path / "run", "raspberry-pi-5", tmp_path / "pi5", samples=4,
                         data=val_dir, eval_images=8).path  # fmt: skip
    samples = np.load(bundle / "samples.npz")
    onnx, tflite = samples["expected_model_int8.onnx"], samples["expected_model_int8.tflite"]
    assert not np.array_equal(onnx, tflite)  # two runtimes' int8: not the same numbers
    ran = subprocess.run(
        [sys.executable, "-c", STANDALONE, str(bundle / "run_bundle.py"), "--threads", "1",
         "--seconds", "0", "--iterations", "1", "--warmup", "0"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    results = json.loads(next((bundle / "results").glob("*.json")).read_text())
    rows = {r["artifact"]: r for r in results["results"]}
    assert set(rows) == {"model.onnx", "model_int8.onnx", "model.tflite", "model_int8.tflite"}
    for row in rows.values():  # the same file and runtime as the host: the same logits
        assert row["check"]["passed"] and row["check"]["max_abs_diff"] < 1e-4, row
        assert row["accuracy"]["agreement_host"] == 1.0
    host = json.loads((bundle / "bundle.json").read_text())["eval"]["host"]
    assert host["model_int8.tflite"]["fp32"] == "model.tflite"
    assert host["model_int8.onnx"]["fp32"] == "model.onnx"


def test_bundle_fails_a_wrong_expectation(lite0_run: Path, tmp_path: Path) -> None:
    """The check is real: logits that do not match the bundled expectations fail the run."""
    bundle = make_bundle(lite0_run, "x86-host", tmp_path / "pi5", samples=2).path
    samples = dict(np.load(bundle / "samples.npz"))
    samples["expected_model.onnx"] = -samples["expected_model.onnx"]
    np.savez(bundle / "samples.npz", **samples)
    ran = subprocess.run(
        [sys.executable, str(bundle / "run_bundle.py"), "--models", "model.onnx", "--threads", "1"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert ran.returncode == 1
    assert "model.onnx: check FAILED" in ran.stdout


def test_bundle_errors_are_clear(lite0_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    with pytest.raises(EdgevtError, match=r"no artifact iphone-15 runs \(.mlpackage, .pte\)"
                       ".*--target coreml"):  # fmt: skip
        make_bundle(lite0_run, "iphone-15", out)
    with pytest.raises(EdgevtError, match="does not exist"):
        make_bundle(tmp_path / "nope", "x86-host", out)
    with pytest.raises(EdgevtError, match="unknown device 'rpi'"):
        make_bundle(lite0_run, "rpi", out)
    (tmp_path / "file").write_text("x")
    with pytest.raises(EdgevtError, match="is a file, not a folder"):
        make_bundle(lite0_run, "x86-host", tmp_path / "file")
    assert not out.exists()


def test_jetson_bundle_builds_engines_on_the_device(lite0_run: Path, tmp_path: Path) -> None:
    bundle = make_bundle(lite0_run, "jetson-orin-nano", tmp_path / "orin", samples=1).path
    script = (bundle / "trtexec.sh").read_text()
    assert "--onnx=models/model_int8.onnx --int8 --fp16 --shapes=images:1x3x224x224" in script
    assert "--onnx=models/model.onnx --fp16 " in script
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["models"]["model_int8.onnx"]["precision"] == "int8"
    assert "./trtexec.sh" in (bundle / "README.md").read_text()


FAKE_TENSORRT = Path(__file__).parent / "fake_tensorrt"


def test_jetson_bundle_checks_scores_and_times_its_engines(lite0_run: Path, tmp_path: Path) -> None:
    """Issue 22 item 4, the plumbing (TensorRT cannot be installed here, so a stand-in for its
    Python API runs the ONNX graph: tests/fake_tensorrt/README.md): the runner builds each
    missing engine from its ONNX file with the flags trtexec.sh uses, holds it to that file's
    host logits, scores it on the labelled images and times it; the report shows it."""
    bundle = make_bundle(lite0_run, "jetson-orin-nano", tmp_path / "orin", samples=2,
                         eval_images=16).path  # fmt: skip
    builds = json.loads((bundle / "bundle.json").read_text())["builds"]
    assert builds["model_int8.engine"]["from"] == "model_int8.onnx"
    assert builds["model_fp16.engine"]["precision"] == "fp16"
    runner = [sys.executable, "-c", STANDALONE, str(bundle / "run_bundle.py"), "--threads", "1",
              "--seconds", "0", "--iterations", "2", "--warmup", "0"]  # fmt: skip

    no_tensorrt = subprocess.run(runner, capture_output=True, text=True, timeout=600)
    assert no_tensorrt.returncode == 0, no_tensorrt.stderr  # the ONNX files still run
    assert "model_int8.engine: not built yet and TensorRT's Python API is missing" in (
        no_tensorrt.stdout
    )
    env = {**os.environ, "PYTHONPATH": str(FAKE_TENSORRT)}
    built = subprocess.run(runner, capture_output=True, text=True, timeout=600, env=env)
    assert built.returncode == 0, built.stdout + built.stderr
    assert "model_int8.engine: building from model_int8.onnx with TensorRT 10.3.0-fake" in (
        built.stdout
    )
    flags = {e: (bundle / "models" / e).read_bytes().split(b"\n")[1] for e in builds}
    assert flags == {"model_int8.engine": b"FP16,INT8", "model_fp16.engine": b"FP16"}
    results = sorted((bundle / "results").glob("*.json"))[-1]
    rows = {r["artifact"]: r for r in json.loads(results.read_text())["results"]}
    assert set(rows) == {"model.onnx", "model_int8.onnx", "model_int8.engine", "model_fp16.engine"}
    engine = rows["model_int8.engine"]
    assert engine["backend"] == "tensorrt 10.3.0-fake" and engine["precision"] == "int8"
    assert engine["built_from"] == "model_int8.onnx" and engine["target"] == "tensorrt"
    assert engine["check"]["passed"] and engine["p50_ms"] > 0
    assert engine["accuracy"]["n"] == 16 and engine["accuracy"]["agreement_host"] >= 0.9
    assert engine["accuracy"]["host_top1"] == rows["model_int8.onnx"]["accuracy"]["host_top1"]

    again = subprocess.run([*runner, "--models", "model_int8.engine"], capture_output=True,
                           text=True, timeout=600, env=env)  # fmt: skip
    assert again.returncode == 0 and "building" not in again.stdout  # built once (or by trtexec)
    wrong = subprocess.run([*runner, "--models", "model.engine"], capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert wrong.returncode == 1 and "model.engine: not in this bundle" in wrong.stderr

    from edgevt.report import collect

    report = collect([lite0_run], [results])
    assert {"model_int8.engine", "model_fp16.engine"} <= {a["artifact"]
                                                          for a in report.device_accuracy}
    timed = {t.artifact: t for t in report.timings}
    assert timed["model_int8.engine"].target == "tensorrt"


def test_the_bundles_mcnemar_is_edgevts() -> None:
    """run_bundle.py restates McNemar's exact p (a bundle cannot import edgevt)."""
    import runpy

    from edgevt.bundle import RUNNER
    from edgevt.validate.significance import mcnemar_p

    mcnemar = runpy.run_path(str(RUNNER), run_name="edgevt_test")["mcnemar"]
    for lost, won in [(0, 0), (12, 9), (70, 20), (0, 7), (3, 3), (51, 19)]:
        assert mcnemar(lost, won) == mcnemar_p(lost, won)


def test_the_report_flags_an_accuracy_gap_on_a_device(tmp_path: Path) -> None:
    from edgevt.report import collect, write_report

    def row(artifact: str, lost: int, won: int, p: float) -> dict:
        return {"artifact": artifact, "precision": "int8", "backend": "ai-edge-litert",
                "threads": 1, "check": {"cosine": 0.999, "top1_agreement": 1.0, "passed": True},
                "accuracy": {"n": 200, "top1": 70.0, "top5": 90.0, "host_top1": 80.0,
                             "p_value": p, "lost": lost, "won": won}}  # fmt: skip

    results = tmp_path / "pi5.json"
    results.write_text(json.dumps({
        "format": "edgevt.device-results/1", "device": "raspberry-pi-5",
        "host": {"machine": "aarch64"}, "finished": "2026-12-06T12:00:00+00:00",
        "results": [row("a_int8.tflite", 25, 5, 0.0003), row("b_int8.tflite", 4, 3, 1.0)],
    }))  # fmt: skip
    report = collect([], [results])
    md = write_report(report, tmp_path / "report", "gap")["markdown"].read_text()
    flagged = [line for line in md.splitlines() if "gap beyond noise" in line]
    assert len(flagged) == 1 and "a_int8.tflite" in flagged[0] and "25 / 5" in flagged[0]


def test_the_export_builds_engines_with_the_bundles_builder(
    lite0_run: Path, tmp_path: Path, monkeypatch
) -> None:
    """One engine builder: `edgevt.targets.tensorrt.build_engine` is the bundle runner's, with
    trtexec.sh's flags (the stand-in for TensorRT records them in its engine)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "tensorrt", FAKE_TENSORRT / "tensorrt" / "__init__.py"
    )
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)  # this test only
    from edgevt.targets.tensorrt import build_engine

    engine = build_engine(lite0_run / "model_int8.onnx", tmp_path / "model_int8.engine")
    assert engine.read_bytes().split(b"\n")[1] == b"FP16,INT8"
    fp16 = build_engine(lite0_run / "model.onnx", tmp_path / "model_fp16.engine", int8=False)
    assert fp16.read_bytes().split(b"\n")[1] == b"FP16"
    assert not list(tmp_path.glob("*.partial"))
