"""TFLite / LiteRT target on a real zoo model and real images: conversion, fp16/w8/int8, the
CalibrationTable's ranges in the int8 file, the LiteRT runner, eval/bench/bundle on .tflite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("litert_torch", reason="tflite extra not installed: pip install edgevt[tflite]")
pytest.importorskip("ai_edge_quantizer", reason="pip install edgevt[tflite]")
pytest.importorskip("ai_edge_litert", reason="pip install edgevt[tflite]")

from edgevt import api  # noqa: E402
from edgevt.errors import EdgevtError  # noqa: E402
from edgevt.quant import tflite_ranges  # noqa: E402
from edgevt.quant.table import CalibrationTable  # noqa: E402
from edgevt.targets.tflite import LiteRTRunner, read_tflite_info  # noqa: E402


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgevt.cli", *args], capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def levit_tflite(tmp_path_factory, calib_dir: Path) -> api.ExportOutcome:
    """Random-weight LeViT-128S to fp32, fp16, w8 and full int8 .tflite (table from 32
    images; --optimize full: these tests read every op's int8 scales)."""
    out = tmp_path_factory.mktemp("tflite") / "levit"
    return api.export(
        "levit_128s", "tflite", out=out, precisions=["fp16", "w8", "int8"], calib=calib_dir,
        calib_size=32, progress=False, optimize="full",
    )  # fmt: skip


def test_fp32_and_fp16_reproduce_pytorch(levit_tflite: api.ExportOutcome) -> None:
    checks = levit_tflite.checks
    assert checks["model.tflite"]["cosine"] > 0.99999
    assert checks["model_fp16.tflite"]["cosine"] > 0.9999
    # weight-only int8 stays close; full int8 of a random LeViT is the hard case (see README)
    assert checks["model_w8.tflite"]["cosine"] > 0.99
    assert checks["model_int8.tflite"]["cosine"] > 0.8


def test_files_carry_their_info_and_shrink(levit_tflite: api.ExportOutcome) -> None:
    run = levit_tflite.run_dir.path
    sizes = {p: (run / f"{p}.tflite").stat().st_size for p in ("model", "model_fp16", "model_w8")}
    assert sizes["model_fp16"] < 0.6 * sizes["model"]
    assert sizes["model_w8"] < 0.35 * sizes["model"]
    for name, precision in [("model", "fp32"), ("model_fp16", "fp16"), ("model_int8", "int8")]:
        info = read_tflite_info(run / f"{name}.tflite")
        assert info is not None and info.precision == precision and info.target == "tflite"
        assert info.model == "levit_128s" and len(info.classes) == 1000


def test_int8_carries_the_table_scales(levit_tflite: api.ExportOutcome) -> None:
    """Every honoured key's tensor has exactly the scale its table range gives; the ones not
    honoured say why (softmax outputs, tensors that must share one scale, an input the
    converter moved the bias of the op before into)."""
    run = levit_tflite.run_dir.path
    q = levit_tflite.get("int8").details
    assert q["scale_problems"] == [] and q["unmatched_ops"] == []
    assert q["honoured"] >= 0.6 * q["table_keys"]
    assert all("softmax" in n.lower() or "one int8 scale" in n or "folded the bias" in n
               for n in q["not_honoured"])  # fmt: skip

    table = CalibrationTable.load(run / "calibration.json")
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(run / "model_int8.tflite"))
    details = {d["name"]: d for d in interp.get_tensor_details()}
    key = "stages.1.blocks.0.mlp.ln1:in0"  # an FC input: honoured unless it shares a scale
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    fp32_t = fu.read_model(run / "model.tflite")
    modules = [n for n, _ in api.fuse("levit_128s").model.named_modules()]
    mapping = tflite_ranges.map_table(fp32_t, table, modules)
    name = tflite_ranges.tensor_name(fp32_t, mapping.tensor_of_key[key])
    scale = details[name]["quantization_parameters"]["scales"][0]
    r = table.activations[key]
    assert scale == pytest.approx(tflite_ranges.int8_scale(r.min, r.max), rel=1e-5)


def test_int8_io_option(levit_tflite: api.ExportOutcome, tmp_path: Path) -> None:
    """int8 input/output tensors, quantized by the runner with the input's scale."""
    from edgevt.quant.calibrate import calibration_batches
    from edgevt.targets import tflite

    run = levit_tflite.run_dir.path
    table = CalibrationTable.load(run / "calibration.json")
    fused = api.fuse("levit_128s")
    batches = calibration_batches(fused.loaded.entry.preprocess, table.source["data"], 8)
    images = next(iter(batches)).numpy()
    path = tmp_path / "model_int8io.tflite"
    tflite.quantize(
        run / "model.tflite", path, "int8", read_tflite_info(run / "model.tflite"), table=table,
        modules=[n for n, _ in fused.model.named_modules()], images=images, int8_io=True,
    )  # fmt: skip
    with LiteRTRunner(path) as runner:
        assert runner.input["dtype"] == np.int8
        int8_io = runner.infer(images[:4])
    with LiteRTRunner(run / "model_int8.tflite") as runner:
        float_io = runner.infer(images[:4])
    cos = (int8_io * float_io).sum(1) / np.linalg.norm(int8_io, axis=1) / np.linalg.norm(
        float_io, axis=1
    )
    assert cos.min() > 0.98  # differs only by input/output rounding


def test_eval_bench_and_pi_bundle_on_tflite(
    levit_tflite: api.ExportOutcome, val_dir: Path, tmp_path: Path
) -> None:
    run = levit_tflite.run_dir.path
    result = api.evaluate(run / "model_fp16.tflite", val_dir, limit=8, progress=False)
    assert result.n == 8 and 0.0 <= result.top1 <= 100.0

    proc = _cli("bench", str(run / "model.tflite"), str(run / "model_int8.tflite"),
                "--threads", "1", "--seconds", "0.5", "--warmup", "1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "model_int8.tflite" in proc.stdout and "p50" in proc.stdout
    assert len(list((run / "bench").glob("*.json"))) == 2

    from edgevt.bundle import make_bundle

    bundle = make_bundle(run, "raspberry-pi-5", tmp_path / "pi5", samples=2).path
    assert (bundle / "models" / "model_int8.tflite").is_file()
    assert not (bundle / "load_pte.py").exists()  # the profile lists executorch; no .pte here
    proc = subprocess.run(
        [sys.executable, str(bundle / "run_bundle.py"), "--threads", "1", "--seconds", "0.3",
         "--models", "model.tflite", "model_fp16.tflite"],
        capture_output=True, text=True, timeout=300, cwd=bundle,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json.loads(next((bundle / "results").glob("*.json")).read_text())
    ran = {r["artifact"]: r for r in results["results"]}
    assert ran["model.tflite"]["backend"] == "ai-edge-litert"
    assert ran["model.tflite"]["check"]["passed"] and "p50_ms" in ran["model_fp16.tflite"]


def test_clear_errors(levit_tflite: api.ExportOutcome, tmp_path: Path) -> None:
    with pytest.raises(EdgevtError, match="does not offer fp16"):
        api.export("levit_128s", "onnx", precisions=["fp16"], out=tmp_path / "x")
    with pytest.raises(EdgevtError, match="--max-drop chooses them for accuracy"):
        api.export("levit_128s", "tflite", max_drop=0.3, int8=True, calib=".", out=tmp_path,
                   optimize="balanced")  # fmt: skip
    corrupt = tmp_path / "broken.tflite"
    corrupt.write_bytes(b"not a flatbuffer at all" * 10)
    with pytest.raises(EdgevtError, match="broken.tflite"):
        api.evaluate(corrupt, ".", limit=1)


def test_quant_config_picks_the_int8_ops(levit_tflite: api.ExportOutcome, tmp_path) -> None:
    """With a QuantConfig only its Conv2d/Linear ops run in int8 (no matmul, softmax...), and
    their tensors still carry the table's scales."""
    from collections import Counter

    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    from edgevt.quant.calibrate import calibration_batches
    from edgevt.quant.config import QuantConfig
    from edgevt.targets import tflite

    run = levit_tflite.run_dir.path
    table = CalibrationTable.load(run / "calibration.json")
    fused = api.fuse("levit_128s")
    images = next(iter(calibration_batches(fused.loaded.entry.preprocess, table.source["data"],
                                           8))).numpy()  # fmt: skip
    config = QuantConfig.from_dict({"module_name": {"head": None}})
    report = tflite.quantize(
        run / "model.tflite", tmp_path / "m.tflite", "int8", read_tflite_info(run / "model.tflite"),
        table=table, modules=[n for n, _ in fused.model.named_modules()], images=images,
        config=config,
    )  # fmt: skip
    assert report.scale_problems == []
    ops = tflite_ranges.read_ops(fu.read_model(tmp_path / "m.tflite"))
    model_t = fu.read_model(tmp_path / "m.tflite")
    int8_ops = Counter(
        op.op_type for op in ops
        if model_t.subgraphs[0].tensors[op.outputs[0]].type == 9  # INT8
    )  # fmt: skip
    # 4 stem convs + 46 of LeViT-128S's 47 Linear layers (the head stays float)
    assert int8_ops["CONV_2D"] == 4 and int8_ops["FULLY_CONNECTED"] == 46
    assert int8_ops["BATCH_MATMUL"] == 0 and int8_ops["SOFTMAX"] == 0
    assert report.config_ops == 50


def test_float_ops_keep_op_types_out_of_int8(levit_tflite: api.ExportOutcome, tmp_path) -> None:
    """--float-ops: the named op types run in float, every other op stays int8 with the
    table's scales; an unknown op type is one clear error."""
    from collections import Counter

    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    from edgevt.quant.calibrate import calibration_batches
    from edgevt.targets import tflite

    run = levit_tflite.run_dir.path
    table = CalibrationTable.load(run / "calibration.json")
    fused = api.fuse("levit_128s")
    images = next(iter(calibration_batches(fused.loaded.entry.preprocess, table.source["data"],
                                           8))).numpy()  # fmt: skip
    args = (run / "model.tflite", tmp_path / "m.tflite", "int8",
            read_tflite_info(run / "model.tflite"))  # fmt: skip
    kw = {"table": table, "modules": [n for n, _ in fused.model.named_modules()],
          "images": images}  # fmt: skip
    report = tflite.quantize(*args, **kw, float_ops=("hard_swish", "BATCH_MATMUL"))
    assert report.scale_problems == [] and report.float_ops == ["HARD_SWISH", "BATCH_MATMUL"]
    model_t = fu.read_model(tmp_path / "m.tflite")
    int8_ops = Counter(
        op.op_type for op in tflite_ranges.read_ops(model_t)
        if model_t.subgraphs[0].tensors[op.outputs[0]].type == 9  # INT8
    )  # fmt: skip
    assert int8_ops["HARD_SWISH"] == 0 and int8_ops["BATCH_MATMUL"] == 0
    assert int8_ops["CONV_2D"] == 4 and int8_ops["FULLY_CONNECTED"] == 47
    assert int8_ops["SOFTMAX"] > 0
    # The glue between float ops stays float with them: LeViT's attention runs batch matmul,
    # scale, bias, softmax, reshape, batch matmul without a QUANTIZE/DEQUANTIZE pair between.
    report = tflite.quantize(*args, **kw, float_ops=("BATCH_MATMUL", "HARD_SWISH", "SOFTMAX"))
    model_t = fu.read_model(tmp_path / "m.tflite")
    ops = tflite_ranges.read_ops(model_t)
    producer = {t: op for op in ops for t in op.outputs}
    kind = {op.index: model_t.subgraphs[0].tensors[op.outputs[0]].type for op in ops}
    for softmax in (op for op in ops if op.op_type == "SOFTMAX"):
        chain, op = [], softmax
        while op.op_type != "BATCH_MATMUL":
            op = producer[op.inputs[0]]
            chain.append(op.op_type)
        assert chain == ["ADD", "MUL", "BATCH_MATMUL"]
    assert not any(kind[op.index] == 9 for op in ops if op.op_type in ("MUL", "SOFTMAX"))
    assert report.glue_ops == 66 and int8_ops["FULLY_CONNECTED"] == 47
    with pytest.raises(EdgevtError, match="unknown TFLite op type.*HARDSWISH"):
        tflite.quantize(*args, **kw, float_ops=("HARDSWISH",))
    with pytest.raises(EdgevtError, match="--float-ops applies to"):
        api.export("levit_128s", "tflite", float_ops=["SOFTMAX"], out=tmp_path / "x")


def test_module_scope_parsing() -> None:
    modules = {"stages.0.blocks.1.attn", "stages.0.blocks.1.attn.qkv", "head"}
    name = (
        "edgevt.fuse.levit.SingleHeadLevitDistilled/torch.nn.modules.container.Sequential_stages/"
        "timm.models.levit.LevitStage_0/torch.nn.modules.container.Sequential_blocks/"
        "timm.models.levit.LevitBlock_1/edgevt.fuse.levit.ConstantBiasAttention_attn/"
        "torch.nn.modules.linear.Linear_qkv;1"
    )
    assert tflite_ranges.module_scope(name, modules) == "stages.0.blocks.1.attn.qkv"
    inner = name.rsplit("/", 1)[0] + ";7"  # a tensor of the attention's own forward
    assert tflite_ranges.module_scope(inner, modules) == "stages.0.blocks.1.attn"
    assert tflite_ranges.module_scope("arith.constant3", modules) is None


def test_module_scope_through_module_lists_and_merged_names() -> None:
    """HF CvT: a ModuleList's children appear without the list (``CvtStage_0`` is
    ``encoder.stages.0``); a tensor the converter merged names several scopes, and the one of
    a weighted module wins."""
    layer = "cvt.encoder.stages.0.layers.0.attention.attention"
    modules = {"cvt", "cvt.encoder", "cvt.encoder.stages", "cvt.encoder.stages.0",
               "cvt.encoder.stages.0.layers", "cvt.encoder.stages.0.layers.0",
               "cvt.encoder.stages.0.layers.0.attention", layer, f"{layer}.projection_query",
               f"{layer}.convolution_projection_query",
               f"{layer}.convolution_projection_query.linear_projection"}  # fmt: skip
    scope = ("Root/t.CvtModel_cvt/t.CvtEncoder_encoder/t.CvtStage_0/t.CvtLayer_0/"
             "t.CvtAttention_attention/t.CvtSelfAttention_attention")
    assert tflite_ranges.module_scope(scope + ";5", modules) == layer
    merged = (f"{scope};{scope}/torch.nn.modules.linear.Linear_projection_query;{scope}/"
              "t.CvtSelfAttentionProjection_convolution_projection_query/"
              "t.CvtSelfAttentionLinearProjection_linear_projection;")
    wanted = {f"{layer}.projection_query"}
    assert tflite_ranges.module_scope(merged, modules, wanted) == f"{layer}.projection_query"
    assert tflite_ranges.module_scope(merged, modules) == layer  # no kind given: the first


def test_glue_between_float_ops_is_data_movement_or_arithmetic_with_a_constant(
    tmp_path: Path,
) -> None:
    """Between two float ops, a reshape and a MUL by a constant stay float with them; a MUL of
    two activations is left to the recipe (keeping CvT's LayerNorm x * rsqrt(var) float beside
    an int8 mean term took its cosine to fp32 from 0.943 to 0.697)."""
    import litert_torch
    import torch
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    class Net(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = torch.softmax(x, -1)
            scaled = (a * 0.5).reshape(4, 8)  # MUL by a constant, then a reshape
            mixed = a.reshape(4, 8) * a.reshape(4, 8)  # a product of activations
            return torch.softmax(scaled, -1) + torch.softmax(mixed, -1)

    path = tmp_path / "net.tflite"
    converted = litert_torch.convert(Net().eval(), (torch.randn(8, 4),))
    path.write_bytes(bytes(converted.model_content()))
    model_t = fu.read_model(path)
    glue = tflite_ranges.ops_between_float_ops(model_t, ("SOFTMAX",))
    constant = {i for i, t in enumerate(model_t.subgraphs[0].tensors)
                if tflite_ranges._is_constant(model_t, t)}  # fmt: skip
    muls = [op for op in tflite_ranges.read_ops(model_t) if op.op_type == "MUL"]
    by_constant = [op for op in muls if constant.intersection(op.inputs)]
    assert by_constant and all(op in glue for op in by_constant)
    mixed = [op for op in muls if op not in by_constant]
    assert mixed and all(op not in glue for op in mixed)
    assert any(op.op_type == "RESHAPE" for op in glue)
