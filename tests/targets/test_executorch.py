"""ExecuTorch target: .pte programs lowered to XNNPACK, int8 by pt2e with the table's ranges
(checked in the converted graph), the runner, eval, bench, a bundle, the report; a damaged
program named."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("executorch", reason="executorch extra not installed: pip install "
                    "edgevt[executorch]")  # fmt: skip

from edgevt import api  # noqa: E402
from edgevt.errors import EdgevtError  # noqa: E402
from edgevt.quant.config import QuantConfig  # noqa: E402
from edgevt.quant.table import CalibrationTable  # noqa: E402
from edgevt.targets import read_artifact_info  # noqa: E402
from edgevt.targets.executorch import ExecutorchRunner, quantize  # noqa: E402
from tests.helpers import real_images, tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory, calib_dir: Path) -> api.ExportOutcome:
    out = tmp_path_factory.mktemp("executorch") / "run"
    return api.export(tiny_model(), "executorch", out=out, int8=True, calib=calib_dir,
                      calib_size=16, progress=False)  # fmt: skip


def test_fp32_and_int8_programs_with_their_info(exported) -> None:
    fp32, int8 = exported.artifacts
    assert fp32.path.name == "model.pte" and int8.path.name == "model_int8.pte"
    for a in (fp32, int8):
        info = read_artifact_info(a.path)
        assert (info.target, info.precision, info.model) == ("executorch", a.precision, "tiny_cnn")
        # XNNPACK takes the convs, adds and the head; the mean over H, W is a portable kernel
        d = a.details
        assert d["delegated_ops"] >= 4 and 0.5 < d["delegated_share"] < 1
        assert d["delegated_share"] == d["delegated_ops"] / (
            d["delegated_ops"] + sum(d["portable_ops"].values())
        )
        assert any("XNNPACK runs" in n for n in a.notes)
    assert fp32.check["cosine"] > 0.99999
    assert int8.check["cosine"] > 0.99 and int8.quantization.quantized_ops > 0
    assert int8.quantization.not_honoured == []
    assert int8.details["quantization"]["honoured"] > 0
    assert not list(exported.run_dir.path.glob(".*.tmp"))


def test_int8_scales_are_the_tables(exported, calib_dir: Path) -> None:
    """Widen one range 4x: the program's scale for that tensor follows the table (the check
    reads the converted graph), and its logits move."""
    import torch

    from edgevt.fused import load_fused

    run = exported.run_dir.path
    model, _ = load_fused(run / "fused.pt")
    table = CalibrationTable.load(run / "calibration.json")
    x = real_images("tiny_cnn", 4)
    base, report = quantize(model, x[:1], table, QuantConfig(), [x])
    key = report.honoured[0]
    r = table.activations[key]
    wide = dataclasses.replace(
        table,
        activations={
            **table.activations,
            key: dataclasses.replace(r, min=4 * r.min, max=4 * r.max),
        },
    )
    moved, wide_report = quantize(model, x[:1], wide, QuantConfig(), [x])
    assert key in wide_report.honoured and wide_report.not_honoured == []
    scales = [float(n.args[1]) for n in moved.graph.nodes
              if "quantize_per_tensor" in str(n.target)]  # fmt: skip
    want = (max(4 * r.max, 0) - min(4 * r.min, 0)) / 255
    assert any(abs(s - want) <= 1e-6 * want for s in scales)
    with torch.no_grad():
        assert not torch.equal(base(x), moved(x))


def test_float_ops_of_the_quant_config_stay_float(exported) -> None:
    import torch

    from edgevt.fused import load_fused

    run = exported.run_dir.path
    model, _ = load_fused(run / "fused.pt")
    table = CalibrationTable.load(run / "calibration.json")
    ops = sorted(table.ops)
    x = real_images("tiny_cnn", 2)
    converted, report = quantize(model, x[:1], table, QuantConfig().keep_float(ops), [x])
    assert report.float_ops == ops and report.quantized_ops == 0
    weighted = [n for n in converted.graph.nodes if n.op == "call_function"
                and str(n.target).split(".")[1] in ("conv2d", "linear")]  # fmt: skip
    assert len(weighted) == 3
    assert all(n.args[1].op == "get_attr" for n in weighted)  # float weights, no dequantize
    with torch.no_grad():  # element-wise ops between them are still int8, as XNNPACK runs them
        assert 0.99 < torch.cosine_similarity(converted(x), model(x)).min()


def test_eval_bench_bundle_and_report(exported, val_dir: Path, tmp_path: Path) -> None:
    run = exported.run_dir.path
    result = api.evaluate(exported.int8.path, val_dir, limit=8, progress=False)
    assert result.n == 8
    timed = api.bench([exported.artifact], threads=[1], seconds=0.05, iterations=2, warmup=1)
    assert timed[0][0].p50_ms > 0 and timed[0][0].runner["backend"].startswith("executorch")
    from edgevt.bundle import make_bundle

    bundle = make_bundle(run, "raspberry-pi-5", tmp_path / "pi5", samples=2, data=val_dir)
    assert sorted(p.name for p in (bundle.path / "models").iterdir()) == [
        "model.pte", "model_int8.pte",
    ]  # fmt: skip
    assert (bundle.path / "load_pte.py").is_file()  # the target's loader, for run_bundle.py
    ran = subprocess.run(  # the bundle's own runner: executorch's runtime (it brings torch)
        [sys.executable, str(bundle.path / "run_bundle.py"), "--threads", "1", "--seconds",
         "0.05", "--iterations", "2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    results = next((bundle.path / "results").glob("raspberry-pi-5-*.json"))
    rows = json.loads(results.read_text())["results"]
    assert {r["artifact"] for r in rows} == {"model.pte", "model_int8.pte"}
    assert all(r["check"]["passed"] and r["backend"].startswith("executorch") for r in rows)
    from edgevt.report import collect, write_report

    report = collect([run], [results])
    md = write_report(report, tmp_path / "report", "executorch")["markdown"].read_text()
    assert "model_int8.pte" in md and "raspberry-pi-5" in md


def test_runner_batches_image_by_image(exported) -> None:
    x = real_images("tiny_cnn", 3).numpy()
    with ExecutorchRunner(exported.artifact, threads=1) as runner:
        batch = runner.infer(x)
        single = np.concatenate([runner.infer(x[i : i + 1]) for i in range(3)])
    assert batch.shape == (3, 1000) and np.array_equal(batch, single)


def test_a_damaged_program_is_named(exported, tmp_path: Path) -> None:
    broken = tmp_path / "model.pte"
    broken.write_bytes(exported.artifact.read_bytes()[:4000])
    with pytest.raises(EdgevtError, match="corrupt or truncated"):
        read_artifact_info(broken)
    garbage = tmp_path / "other.pte"
    garbage.write_bytes(b"not a program at all")
    with pytest.raises(EdgevtError, match="corrupt or truncated"):
        read_artifact_info(garbage)


def test_a_scale_that_is_not_the_tables_is_listed(exported) -> None:
    """The check after conversion reads the graph: a table range the program does not carry
    is named with both scales."""
    from edgevt.fused import load_fused
    from edgevt.targets.executorch import PteQuantReport, _check_scales

    run = exported.run_dir.path
    model, _ = load_fused(run / "fused.pt")
    table = CalibrationTable.load(run / "calibration.json")
    x = real_images("tiny_cnn", 2)
    converted, report = quantize(model, x[:1], table, QuantConfig(), [x])
    key = report.honoured[0]
    r = table.activations[key]
    moved = dataclasses.replace(
        table,
        activations={**table.activations, key: dataclasses.replace(r, max=r.max * 3 + 1)},
    )
    sources = {n.args[0].name: key for n in converted.graph.nodes
               if "quantize_per_tensor" in str(n.target)
               and "dequantize" not in str(n.target)}  # fmt: skip
    checked = PteQuantReport()
    _check_scales(converted, sources, moved, checked)
    assert checked.honoured == [] and checked.not_honoured[0].startswith(f"{key}: scale ")
