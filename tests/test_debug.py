"""`edgevt debug`: an int8 file's intermediates against fp32 and edgevt's simulation, at the
calibration table's names; a file that departs from the simulation is caught and named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from edgevt import api
from edgevt.debug import FAITHFUL_COSINE, debug, debug_artifact
from edgevt.errors import EdgevtError
from tests.helpers import _register, tiny_model


@pytest.fixture(scope="module", params=["onnx", "tensorrt"])
def int8_run(request, tmp_path_factory, calib_dir: Path) -> Path:
    out = tmp_path_factory.mktemp(f"debug-{request.param}") / "run"
    api.export(tiny_model(), request.param, out=out, int8=True, calib=calib_dir, calib_size=16,
               progress=False)  # fmt: skip
    return out


def test_the_file_computes_what_the_simulation_computes(int8_run: Path, calib_dir) -> None:
    result, path = debug(int8_run / "model_int8.onnx", calib_dir, limit=6, batch_size=4,
                         progress=False)  # fmt: skip
    assert result.images == 6
    keys = {t.key for t in result.tensors}
    assert {"conv:in0", "conv2:in0", "head:in0"} <= keys  # the table's own names
    assert all(t.int8 for t in result.tensors if t.key.endswith(":in0"))
    assert result.faithful_share == 1.0 and not result.departures and not result.drifted
    assert all(t.cosine_local > FAITHFUL_COSINE for t in result.tensors if t.int8)
    assert result.logits["cosine_sim"] > FAITHFUL_COSINE
    # int8 is not free: the file departs from fp32, and the SQNR says by how much
    assert all(t.sqnr_fp32_db is not None and 5 < t.sqnr_fp32_db < 80 for t in result.tensors)
    for t in result.tensors:  # TensorRT's symmetric grid: a ReLU6 output fills half of it
        if t.int8:
            assert 0.4 < t.range_use <= 1.0 and 0.0 <= t.clipped < 0.2
    assert {x.op for x in result.layers} == {"conv", "conv2", "head"}
    assert all(x.dominant in ("weights", "activations") for x in result.layers)
    saved = json.loads(path.read_text())
    assert path == int8_run / "debug" / "model_int8.onnx.json"
    assert saved["faithful_share"] == 1.0 and len(saved["tensors"]) == len(result.tensors)


def test_a_file_that_departs_from_the_simulation_is_named(int8_run: Path, calib_dir,
                                                          tmp_path: Path) -> None:  # fmt: skip
    """Double the scale of conv2's input in the file only: the simulation (from the table)
    no longer matches, and debug says where the two first part."""
    import onnx
    from onnx import numpy_helper

    run = tmp_path / "run"
    shutil.copytree(int8_run, run)
    proto = onnx.load(str(run / "model_int8.onnx"))
    conv2 = next(n for n in proto.graph.node if n.op_type == "Conv" and "conv2" in n.name)
    dq = next(n for n in proto.graph.node if conv2.input[0] in n.output)
    scale = next(t for t in proto.graph.initializer if t.name == dq.input[1])
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 2, scale.name))
    onnx.save(proto, str(run / "model_int8.onnx"))

    result = debug_artifact(run / "model_int8.onnx", calib_dir, limit=4, progress=False)
    # step by step, only conv2's input departs: what follows computes the simulation's rule
    # from the file's own (wrong) values, so it drifts end to end without departing
    assert [d.key for d in result.departures] == ["conv2:in0"]
    assert "int8 grid" in result.departures[0].why
    assert "not the table's" in result.departures[0].why
    assert "conv2:out" in result.drifted and "conv:in0" not in result.drifted
    assert result.faithful_share == 1 - 1 / len(result.tensors)


def test_refusals_are_one_clear_error(int8_run: Path, calib_dir, tmp_path: Path) -> None:
    with pytest.raises(EdgevtError, match="not int8"):
        debug_artifact(int8_run / "model.onnx", calib_dir, progress=False)
    shutil.copy(int8_run / "model_int8.onnx", tmp_path / "lonely.onnx")
    with pytest.raises(EdgevtError, match="not in an edgevt run directory"):
        debug_artifact(tmp_path / "lonely.onnx", calib_dir, progress=False)
    with pytest.raises(EdgevtError, match="does not exist"):
        debug_artifact(tmp_path / "missing.onnx", calib_dir, progress=False)
    with pytest.raises(EdgevtError, match="--reference"):
        debug_artifact(int8_run / "model_int8.onnx", calib_dir, reference=tmp_path / "no.pt",
                       progress=False)  # fmt: skip


def test_cli_prints_the_table_and_fails_in_one_line(int8_run: Path, calib_dir, capsys,
                                                    tmp_path: Path) -> None:  # fmt: skip
    from edgevt.cli import main

    code = main(["debug", str(int8_run / "model_int8.onnx"), "--data", str(calib_dir),
                 "--limit", "2", "-o", str(tmp_path / "dbg"), "--json"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "conv2:in0" in out and "faithful to the simulation" in out
    assert json.loads(out.splitlines()[-1])["images"] == 2
    assert (tmp_path / "dbg" / "model_int8.onnx.json").is_file()
    code = main(["debug", str(int8_run / "model.onnx"), "--data", str(calib_dir)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("edgevt: error:") and len(err.splitlines()) == 1


@pytest.fixture(scope="module")
def tflite_run(tmp_path_factory, calib_dir: Path) -> Path:
    pytest.importorskip("ai_edge_litert", reason="pip install edgevt[tflite]")
    out = tmp_path_factory.mktemp("debug-tflite") / "run"
    api.export(tiny_model(), "tflite", out=out, int8=True, calib=calib_dir, calib_size=16,
               progress=False, optimize="full")  # fmt: skip
    return out


def test_a_tflite_file_is_read_back_tensor_by_tensor(tflite_run: Path, calib_dir) -> None:
    """LiteRT's own int8 tensors (NHWC in the file) at the table's names, against fp32 and
    the simulation of LiteRT's rules: conv's fused ReLU6 is compared after the same clip."""
    result = debug_artifact(tflite_run / "model_int8.tflite", calib_dir, limit=4,
                            progress=False)  # fmt: skip
    keys = {t.key for t in result.tensors}
    assert {"conv:in0", "conv:out", "conv2:in0", "conv2:out", "head:in0"} <= keys
    assert all(t.int8 for t in result.tensors)  # full integer: every tensor on a grid
    assert "LiteRT" in result.runtime
    assert result.faithful_share >= 0.95
    assert all(d.why and not d.why.startswith("unexplained") for d in result.departures)
    conv_out = next(t for t in result.tensors if t.key == "conv:out")
    assert conv_out.cosine_local > FAITHFUL_COSINE and conv_out.sqnr_fp32_db > 20


def test_bisect_on_tflite_measures_tflite_files(tflite_run: Path, calib_dir,
                                                tmp_path: Path) -> None:  # fmt: skip
    """The candidates are .tflite files the export would write with the config, run by LiteRT;
    the config written gives such a file."""
    run = tmp_path / "run"
    shutil.copytree(tflite_run, run)
    as_exported = debug_artifact(run / "model_int8.tflite", calib_dir, limit=4, progress=False)
    goal = 1 - (1 - as_exported.logits["cosine_fp32"]) / 4
    result, _ = debug(run / "model_int8.tflite", calib_dir, limit=2, fix_to=goal,
                      bisect_images=8, progress=False)  # fmt: skip
    b = result.bisect
    assert b["met"] and b["measured"] >= goal > b["as_given"] and b["files_checked"] >= 1
    out = api.export(tiny_model(), "tflite", out=tmp_path / "again", int8=True,
                     calib_table=run / "calibration.json", quant_config=b["config"],
                     calib=calib_dir, progress=False)  # fmt: skip
    assert out.artifacts[1].quantization.summary.startswith(f"{3 - len(b['kept_float'])} ops")


def test_a_core_ml_package_is_read_back_operand_by_operand(tmp_path: Path, calib_dir) -> None:
    """The w8a8 package's quantize/dequantize pairs, run by the MIL interpreter, at the keys
    the export recorded; Core ML quantizes op inputs only, so outputs are float."""
    pytest.importorskip("coremltools", reason="pip install edgevt[coreml]")
    out = api.export(tiny_model(), "coreml", out=tmp_path / "run", int8=True, calib=calib_dir,
                     calib_size=8, progress=False)  # fmt: skip
    package = next(a.path for a in out.artifacts if a.precision == "w8a8")
    result = debug_artifact(package, calib_dir, limit=4, progress=False)
    int8 = {t.key for t in result.tensors if t.int8}
    assert int8 == {"conv:in0", "conv2:in0", "head:in0"}
    assert {t.key for t in result.tensors} - int8 == {"conv:out", "conv2:out", "head:out"}
    assert result.faithful_share == 1.0 and "MIL" in result.runtime
    assert all(t.cosine_local > FAITHFUL_COSINE for t in result.tensors if t.int8)
    with pytest.raises(EdgevtError, match="not w8a8.*model_w8a8.mlpackage"):
        debug_artifact(package.with_name("model.mlpackage"), calib_dir, progress=False)


def test_other_targets_are_refused_with_what_to_do(tmp_path: Path, calib_dir) -> None:
    pytest.importorskip("openvino", reason="pip install edgevt[openvino]")
    out = api.export(tiny_model(), "openvino", out=tmp_path / "run", int8=True, calib=calib_dir,
                     calib_size=8, progress=False)  # fmt: skip
    int8 = next(a.path for a in out.artifacts if a.precision == "int8")
    with pytest.raises(EdgevtError, match="tflite, coreml files, not openvino"):
        debug_artifact(int8, calib_dir, progress=False)


def test_the_page_and_the_report_show_it(int8_run: Path, calib_dir, tmp_path: Path) -> None:
    """debug writes ARTIFACT.html beside the JSON (SQNR along the depth, departures), and
    `edgevt report` of the run lists the result and links the page."""
    from xml.dom import minidom

    from edgevt.report import collect, write_report

    run = tmp_path / "run"
    shutil.copytree(int8_run, run)
    result, path = debug(run / "model_int8.onnx", calib_dir, limit=2, progress=False)
    page = path.with_suffix(".html").read_text()
    assert "<svg" in page and "SQNR along the depth" in page and "conv2:in0" in page
    assert page.count("<circle") == len(result.tensors)
    svg = page[page.index("<svg"): page.index("</svg>") + len("</svg>")]
    minidom.parseString(svg)  # well-formed: browsers draw nothing of a broken inline SVG
    report = collect([run])
    assert [(d["file"], d["departures"]) for d in report.debug] == [("model_int8.onnx", 0)]
    paths = write_report(report, tmp_path / "report", "t")
    assert "../run/debug/model_int8.onnx.html" in paths["html"].read_text()
    assert "int8 debug" in paths["markdown"].read_text()


def test_bisect_finds_a_float_set_export_takes(int8_run: Path, calib_dir, tmp_path: Path) -> None:
    """A cosine goal the all-int8 file misses: the chosen float set, verified on exported
    files, is written as a quant config; exporting with it gives a file that meets the goal."""
    from edgevt.quant.config import QuantConfig

    run = tmp_path / "run"
    shutil.copytree(int8_run, run)
    as_exported = debug_artifact(run / "model_int8.onnx", calib_dir, limit=4, progress=False)
    goal = 1 - (1 - as_exported.logits["cosine_fp32"]) / 4  # a quarter of the error left
    result, path = debug(run / "model_int8.onnx", calib_dir, limit=2, fix_to=goal,
                         bisect_images=8, progress=False)  # fmt: skip
    b = result.bisect
    assert b["met"] and b["measured"] >= goal > b["as_given"]
    assert 1 <= len(b["kept_float"]) <= 3
    page = path.with_suffix(".html").read_text()  # the ranking, the chosen set marked
    assert "Which ops to keep in float" in page and page.count("#d62728;height") >= 2
    assert b["kept_float"] == [op for op, _ in b["order"][: len(b["kept_float"])]]
    kls = [kl for _, kl in b["order"][:2]]  # the greedy order: each pick lowers the KL
    assert kls == sorted(kls, reverse=True)
    config = QuantConfig.load(b["config"])
    assert all(config.resolve(op, "Linear" if op == "head" else "Conv2d") is None
               for op in b["kept_float"])  # fmt: skip
    target = json.loads((run / "manifest.json").read_text())["stages"]["export"]["settings"]
    out = api.export(tiny_model(), target["target"], out=tmp_path / "again", int8=True,
                     calib_table=run / "calibration.json", quant_config=b["config"],
                     progress=False)  # fmt: skip
    assert sorted(out.artifacts[1].quantization.float_ops) == sorted(b["kept_float"])
    with pytest.raises(EdgevtError, match="one goal"):
        debug(run / "model_int8.onnx", calib_dir, max_drop=1, fix_to=0.9, progress=False)


def test_a_graph_padded_input_is_compared_on_its_unpadded_window() -> None:
    """TF "same" padding puts the smaller half before: Lite0's stem (224 -> 225) pads after
    only, a 5x5 stride-2 conv (14 -> 17) one before and two after."""
    from edgevt.debug import _window

    a = _window((4, 3, 225, 225), (4, 3, 224, 224))
    assert [(s.start, s.stop) for s in a[2:]] == [(0, 224), (0, 224)]
    b = _window((4, 96, 17, 17), (4, 96, 14, 14))
    assert [(s.start, s.stop) for s in b[2:]] == [(1, 15), (1, 15)]
    assert _window((4, 96, 14, 14), (4, 96, 14, 14)) is None
    assert _window((4, 8, 20, 20), (4, 96, 14, 14)) is None  # not a padding of it


class _Chain(torch.nn.Module):
    """A stem conv fed by the image, a second conv, a head: keeping ``conv2`` in float leaves
    the stem between float tensors, which ONNX Runtime's export then floats too."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.act = torch.nn.ReLU6()
        self.head = torch.nn.Linear(8, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv2(self.act(self.stem(x)))).mean((2, 3)))


def _chain() -> torch.nn.Module:
    torch.manual_seed(0)
    return _Chain()


def test_candidates_are_simulated_as_the_files_the_export_writes(tmp_path: Path,
                                                                  calib_dir) -> None:  # fmt: skip
    """The bisection ranks float sets in the simulation: each must quantize what the file
    written with that set does. With ``conv2`` float, ONNX Runtime's file floats the stem too
    (the simulation used to keep it int8: Lite0's first depthwise conv then looked useless to
    keep in float, though its file lost 2 points less)."""
    from edgevt.artifact import ArtifactInfo
    from edgevt.debug import _check_artifact, _run_inputs
    from edgevt.debug_bisect import rank_ops
    from edgevt.quant.config import QuantConfig
    from edgevt.quant.onnx_qdq import file_quantized_ops
    from edgevt.quant.sensitivity import choose_float_layers
    from edgevt.targets import get_target

    name = _register("tiny_chain", _chain)
    run = tmp_path / "run"
    api.export(name, "onnx", out=run, int8=True, calib=calib_dir, calib_size=8, progress=False)
    artifact = run / "model_int8.onnx"
    info = _check_artifact(artifact, calib_dir, 2, 2)
    inputs = _run_inputs(artifact, None, info)
    plugin = get_target("onnx")
    sim = plugin.simulation(inputs.fused, inputs.fp32_onnx, inputs.table, None, artifact)
    assert sim.ops == {"stem", "conv2", "head"}
    quantized = file_quantized_ops(inputs.fp32_onnx, inputs.table, inputs.config,
                                   plugin.quantization_rules(), sim.ops)  # fmt: skip
    assert quantized(["conv2"]) == {"head"} and quantized(["head"]) == {"stem", "conv2"}
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        ranking = dict(rank_ops(sim, images, inputs.fused(images), False, quantized))
    assert ranking["stem"] == 0 < ranking["conv2"]  # the file would not quantize the stem alone
    written = ArtifactInfo.from_json(info.to_json())  # the export records its float ops here
    plugin.int8_variant(run, tmp_path / "v.onnx", inputs.table,
                        inputs.config.keep_float(["conv2"]), written)  # fmt: skip
    assert sorted(written.extra["float_ops"]) == ["conv2", "stem"]
    litert = get_target("tflite").quantization_rules()  # floats nothing by itself
    assert file_quantized_ops(inputs.fp32_onnx, inputs.table, inputs.config, litert,
                              sim.ops)(["conv2"]) == {"stem", "head"}  # fmt: skip
    # export --max-drop ranks the same way
    budget = choose_float_layers(inputs.fused, inputs.table, QuantConfig(),
                                 plugin.quantization_rules(), calib_dir, info.preprocess, 100.0,
                                 fp32_onnx=run / "model.onnx", n_images=4, n_rank=4,
                                 progress=False)  # fmt: skip
    assert dict(budget.ranking)["stem"] == 0 < dict(budget.ranking)["conv2"]
