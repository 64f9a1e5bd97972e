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


def _fused_and_table(exported: api.ExportOutcome):
    """The run's fused model and CalibrationTable, to quantize again in a test."""
    from edgevt.fused import load_fused

    run = exported.run_dir.path
    return load_fused(run / "fused.pt")[0], CalibrationTable.load(run / "calibration.json")


def _with_range(table: CalibrationTable, key: str, **change: float) -> CalibrationTable:
    """``table`` with one activation range changed."""
    r = table.activations[key]
    return dataclasses.replace(
        table, activations={**table.activations, key: dataclasses.replace(r, **change)}
    )


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

    model, table = _fused_and_table(exported)
    x = real_images("tiny_cnn", 4)
    base, report = quantize(model, x[:1], table, QuantConfig(), [x])
    key = report.honoured[0]
    r = table.activations[key]
    wide = _with_range(table, key, min=4 * r.min, max=4 * r.max)
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

    model, table = _fused_and_table(exported)
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
    from edgevt.targets.executorch import PteQuantReport, _check_scales

    model, table = _fused_and_table(exported)
    x = real_images("tiny_cnn", 2)
    converted, report = quantize(model, x[:1], table, QuantConfig(), [x])
    key = report.honoured[0]
    moved = _with_range(table, key, max=table.activations[key].max * 3 + 1)
    sources = {n.args[0].name: key for n in converted.graph.nodes
               if "quantize_per_tensor" in str(n.target)
               and "dequantize" not in str(n.target)}  # fmt: skip
    checked = PteQuantReport()
    _check_scales(converted, sources, moved, checked)
    assert checked.honoured == [] and checked.not_honoured[0].startswith(f"{key}: scale ")


@pytest.fixture(scope="module")
def coreml_delegated(tmp_path_factory, calib_dir: Path) -> api.ExportOutcome:
    pytest.importorskip("coremltools", reason="the Core ML delegate needs edgevt[coreml]")
    out = tmp_path_factory.mktemp("executorch-coreml") / "run"
    return api.export(tiny_model(), "executorch", out=out, int8=True, calib=calib_dir,
                      calib_size=16, progress=False, delegate="coreml")  # fmt: skip


def test_core_ml_delegate_takes_the_whole_graph_and_runs_here(
    coreml_delegated, val_dir: Path
) -> None:
    """--delegate coreml: the .pte embeds a Core ML package (the whole graph, the mean that
    XNNPACK leaves portable included), which edgevt's MIL interpreter runs off macOS; int8
    keeps its quantize ops inside the package, with the table's ranges honoured."""
    import tempfile

    import torch

    from edgevt.fused import load_fused
    from edgevt.targets.coreml.mil_interpreter import MilProgram
    from edgevt.targets.executorch import coreml_package, read_delegates

    fp32, int8 = coreml_delegated.artifacts
    for a in (fp32, int8):
        assert a.details["delegate"] == "coreml" and a.details["delegated_share"] == 1.0
        assert a.details["portable_ops"] == {} and any("Core ML runs" in n for n in a.notes)
        assert read_delegates(a.path) == (["CoreMLBackend"], [])
    assert fp32.check["cosine"] > 0.99999
    assert int8.quantization.not_honoured == [] and int8.quantization.quantized_ops > 0
    with tempfile.TemporaryDirectory() as folder:
        ops = MilProgram(coreml_package(int8.path, Path(folder))).op_types()
    assert ops.get("quantize", 0) > 0 and ops.get("dequantize", 0) > 0
    x = real_images("tiny_cnn", 3)
    model, _ = load_fused(coreml_delegated.run_dir.path / "fused.pt")
    with ExecutorchRunner(fp32.path) as runner:
        assert runner.interpreted and "MIL reference interpreter" in runner.describe()["backend"]
        got = runner.infer(x.numpy())
    with torch.no_grad():
        assert np.allclose(got, model(x).numpy(), atol=1e-4)
    result = api.evaluate(int8.path, val_dir, limit=8, progress=False)
    assert result.n == 8 and "Core ML" in result.runner["backend"]


def test_core_ml_delegate_refusals(coreml_delegated, monkeypatch) -> None:
    from edgevt.targets import get_target
    from edgevt.targets.executorch import ExecutorchOptions

    target = get_target("executorch")
    with pytest.raises(EdgevtError, match="choose from xnnpack, coreml"):
        target.validate(ExecutorchOptions(delegate="tpu"), ["fp32"], None)
    # a program Core ML did not take whole cannot run in the interpreter: refused by name
    monkeypatch.setattr("edgevt.targets.executorch.read_delegates",
                        lambda path: (["CoreMLBackend"], ["aten::mean.out"]))  # fmt: skip
    with pytest.raises(EdgevtError, match="outside Core ML .*aten::mean.out"):
        ExecutorchRunner(coreml_delegated.artifact)


def test_a_core_ml_program_goes_only_to_apple_bundles(coreml_delegated, val_dir, tmp_path) -> None:
    from edgevt.bundle import make_bundle

    run = coreml_delegated.run_dir.path
    iphone = make_bundle(run, "iphone-15", tmp_path / "iphone", samples=2, data=val_dir)
    assert sorted(p.name for p in (iphone.path / "models").iterdir()) == [
        "model.pte", "model_int8.pte",
    ]  # fmt: skip
    assert (iphone.path / "load_pte.py").is_file()
    built_for_apple = r"\(model.pte, model_int8.pte were built for another device\)"
    with pytest.raises(EdgevtError, match=f"no artifact raspberry-pi-5 runs .*{built_for_apple}"):
        make_bundle(run, "raspberry-pi-5", tmp_path / "pi5", samples=2, data=val_dir)


def test_quantized_scalar_constants_reach_core_ml_with_their_value(tmp_path: Path) -> None:
    """LeViT's ``attn = q @ k.T * scale``: XNNPACK's quantizer stores the scalar on an int8
    activation grid (127 at zero point -128), and coremltools' own folding of it gave -0.00098
    for 0.25, flipping every attention map. edgevt folds such constants to float first."""
    pytest.importorskip("coremltools", reason="the Core ML delegate needs edgevt[coreml]")
    import copy
    import tempfile

    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgevt.artifact import ArtifactInfo
    from edgevt.data.preprocess import Preprocess
    from edgevt.targets.coreml.mil_interpreter import MilProgram
    from edgevt.targets.executorch import coreml_package, fold_quantized_constants, lower

    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x) * 0.25

    torch.manual_seed(0)
    x = torch.randn(1, 4, 8)
    graph = torch.export.export(Scaled().eval(), (x,)).module()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config())
    prepared = prepare_pt2e(graph, quantizer)
    prepared(x)
    info = ArtifactInfo(model="scaled", preprocess=Preprocess(input_size=8), classes=[])

    def core_ml(converted: torch.nn.Module, name: str) -> np.ndarray:
        lower(torch.export.export(converted, (x,)), info, tmp_path / name, "coreml")
        with tempfile.TemporaryDirectory() as folder:
            program = MilProgram(coreml_package(tmp_path / name, Path(folder)))
            (feed,) = program.inputs
            (out,) = program.outputs
            return program.run({feed: x.numpy()})[out]

    with torch.no_grad():  # convert_pt2e changes what it converts: one copy each
        want = convert_pt2e(copy.deepcopy(prepared))(x).numpy()
    unfolded = core_ml(convert_pt2e(copy.deepcopy(prepared)), "unfolded.pte")
    converted = convert_pt2e(prepared)
    assert fold_quantized_constants(converted) == 1
    folded = core_ml(converted, "folded.pte")
    assert np.allclose(folded, want, atol=0.02 * np.abs(want).max())
    # coremltools' own folding is what this guards against; if a release fixes it, say so
    assert (unfolded * want).sum() < 0, "coremltools now folds int8 scalars right"
