"""Observers, the table, the config, Q/DQ on a small real graph, TensorRT's rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgevt.artifact import ArtifactInfo
from edgevt.data.imagenet import imagenet_synsets, open_dataset
from edgevt.data.preprocess import Preprocess
from edgevt.errors import EdgevtError
from edgevt.quant.calibrate import calibrate_model, trace_ops
from edgevt.quant.config import QuantConfig
from edgevt.quant.observers import RangeObserver, entropy_amax, mse_amax
from edgevt.quant.onnx_qdq import node_scope, write_qdq_onnx
from edgevt.quant.simulate import FakeQuantModel
from edgevt.quant.table import CalibrationTable, diff_tables
from edgevt.targets.onnx import OnnxRuntimeRunner, export_onnx
from edgevt.targets.tensorrt import check_tensorrt_qdq, write_calibration_cache
from edgevt.validate.evaluate import compare_logits
from tests.helpers import rules


class Attention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        attn = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1)
        return x + self.proj(attn @ v)


class TinyViT(nn.Module):
    """Conv stem, one attention block (functional matmuls), a classifier: every op kind."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, 4), nn.Hardswish(), nn.Conv2d(16, 32, 2, 2))
        self.blocks = nn.Sequential(Attention(32))
        self.head = nn.Linear(32, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).flatten(2).transpose(1, 2)
        return self.head(self.blocks(x).mean(1))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = TinyViT().eval()
    images = torch.randn(64, 3, 32, 32)
    table = calibrate_model(model, images.split(16), model_name="tiny", weights="random")
    info = ArtifactInfo("tiny", Preprocess(32, 1.0), imagenet_synsets(), target="onnx")
    path = tmp_path_factory.mktemp("tiny") / "model.onnx"
    export_onnx(model, info, path)
    return model, images, table, info, path


def test_observer_methods_clip_outliers_but_never_widen() -> None:
    obs = RangeObserver()
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        obs.observe(torch.randn(10000, generator=gen))
    obs.observe(torch.tensor([40.0]))  # one outlier: the histogram doubles its range
    assert obs.range("minmax") == (obs.min, 40.0)
    for method in ("percentile", "entropy"):
        lo, hi = obs.range(method)
        assert obs.min <= lo < 0 < hi < 10, method
    lo, hi = obs.range("mse")  # one outlier costs more squared error than coarse steps do
    assert obs.min <= lo < 0 < hi <= 40
    assert sum(obs.hist) == pytest.approx(40001)
    with pytest.raises(ValueError):
        obs.range("kl-divergence")


def test_entropy_and_mse_find_the_bulk_of_a_gaussian() -> None:
    x = np.abs(np.random.default_rng(0).standard_normal(1_000_000))
    hist, _ = np.histogram(x, bins=2048, range=(0, x.max()))
    assert 3.7 < mse_amax(hist, x.max()) < 4.1  # ACIQ: 8-bit Gaussian optimum is ~3.9 sigma
    x = np.concatenate([x, [50.0] * 3])  # three far outliers
    hist, _ = np.histogram(x, bins=2048, range=(0, 50.0))
    assert 3.0 < entropy_amax(hist, 50.0) < 5.0  # KL ignores them; min-max would take 50


def test_calibration_names_modules_and_matmul_products(tiny) -> None:
    model, images, table, _, _ = tiny
    ops = table.source["ops"]
    assert ops == {
        "stem.0": "Conv2d",
        "stem.2": "Conv2d",
        "blocks.0.qkv": "Linear",
        "blocks.0@matmul0": "matmul",
        "blocks.0@matmul1": "matmul",
        "blocks.0.proj": "Linear",
        "head": "Linear",
    }
    assert [op.name for op in trace_ops(model, images[:1])] == list(ops)
    assert {"blocks.0@matmul1:in0", "blocks.0@matmul1:in1", "stem.0:out"} <= set(table.activations)
    softmax = table.activations["blocks.0@matmul1:in0"]
    assert 0 <= softmax.min and softmax.max <= 1
    assert len(table.weight_amax["head"]) == 1000


def test_table_round_trip_and_refusals(tiny, tmp_path) -> None:
    table = tiny[2]
    path = table.save(tmp_path / "t.json")
    again = CalibrationTable.load(path)
    assert again.to_dict() == json.loads(path.read_text())
    assert diff_tables(table, again) == []
    with pytest.raises(EdgevtError, match="made for 'tiny', not 'levit_128s'"):
        again.check_for("levit_128s")
    with pytest.raises(EdgevtError, match="lacks 1 tensors"):
        again.check_for("tiny", {"nowhere:in0"})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(EdgevtError, match="not JSON"):
        CalibrationTable.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    with pytest.raises(EdgevtError, match="not an edgevt calibration table"):
        CalibrationTable.load(tmp_path / "other.json")


def test_config_layers_and_validation() -> None:
    config = QuantConfig.from_dict(
        {"op_type": {"Linear": {"weights": "per_tensor"}}, "module_name": {"head": None}}
    )
    assert config.resolve("stem.0", "Conv2d").weights == "per_channel"
    assert config.resolve("blocks.0.qkv", "Linear").weights == "per_tensor"
    assert config.resolve("head", "Linear") is None
    assert config.resolve("blocks.0@matmul0", "matmul") is None  # default: float
    assert QuantConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
    assert config.keep_float(["stem.0"]).resolve("stem.0", "Conv2d") is None
    for bad in ({"gloabl": {}}, {"op_type": {"Softmax": {}}}, {"global": {"bits": 4}}):
        with pytest.raises(EdgevtError):
            QuantConfig.from_dict(bad)


def test_node_scope_follows_module_paths() -> None:
    assert node_scope("/stages/stages.0/blocks/blocks.1/attn/qkv/MatMul") == (
        "stages.0.blocks.1.attn.qkv"
    )
    assert node_scope("/blocks/blocks.0/blocks.0.0/conv_dw/Conv") == "blocks.0.0.conv_dw"
    assert node_scope("/cvt/encoder/stages.0/layers.0/attention/Einsum") == (
        "cvt.encoder.stages.0.layers.0.attention"
    )


@pytest.mark.parametrize("target", ["onnx", "tensorrt"])
def test_qdq_export_matches_fake_quant_and_obeys_rules(tiny, tmp_path, target) -> None:
    model, images, table, info, fp32 = tiny
    config = QuantConfig.from_dict({"op_type": {"matmul": {}}})  # quantize every op kind
    out = tmp_path / f"int8-{target}.onnx"
    plan = write_qdq_onnx(fp32, out, table, config, rules(target), info)
    # ORT has no int8 kernel for a Conv whose output stays float (the stem's feed a Hardswish
    # and a reshape): the export keeps those in float; TensorRT's rules quantize every op.
    floated = ["stem.0", "stem.2"] if target == "onnx" else []
    assert sorted(plan.kept_float) == floated
    assert sorted(plan.quantized) == sorted(set(table.source["ops"]) - set(floated))
    proto = onnx.load(str(out))
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) >= 2 * len(plan.quantized)  # an activation and a weight (or 2) per op
    problems = check_tensorrt_qdq(proto)
    if target == "tensorrt":
        assert problems == []
    else:  # uint8 activations with zero points and int32 biases: not TensorRT's rules
        assert any("zero point is uint8" in p for p in problems)
        assert any("int32" in p for p in problems)
    # exact QDQ simulation in ORT == our fake quantization in PyTorch
    with OnnxRuntimeRunner(out, optimization="none") as runner:
        ort_logits = runner.infer(images[:16].numpy())
    with torch.no_grad():
        simulated = config.keep_float(plan.kept_float)
        fq = FakeQuantModel(model, table, simulated, rules(target))(images[:16]).numpy()
        ref = model(images[:16]).numpy()
    assert compare_logits(fq, ort_logits)["cosine"] > 0.9999
    assert np.abs(fq - ort_logits).max() < 0.05 * np.abs(ref).max()
    assert compare_logits(ref, ort_logits)["cosine"] > 0.99


class TinyCNN(nn.Module):
    """Conv -> ReLU6 -> Conv -> pool -> Linear, and a Conv -> Hardswish branch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 2)
        self.conv2 = nn.Conv2d(8, 16, 3, 2)
        self.side = nn.Conv2d(3, 16, 3, 2)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv2(nn.functional.relu6(self.conv1(x))).mean((2, 3))
        b = nn.functional.hardswish(self.side(x)).mean((2, 3))
        return self.head(torch.cat([a, b], 1))


def calibrated_export(model: nn.Module, images: torch.Tensor, where: Path):
    """(table, info, fp32 ONNX path) of a small 10-class CNN, calibrated on ``images``."""
    table = calibrate_model(model, images.split(16), model_name="tiny", weights="random")
    info = ArtifactInfo("tiny", Preprocess(32, 1.0), imagenet_synsets()[:10], target="onnx")
    fp32 = where / "model.onnx"
    export_onnx(model, info, fp32)
    return table, info, fp32


@pytest.mark.parametrize("target", ["onnx", "tensorrt"])
def test_onnx_runtime_keeps_convs_without_int8_kernel_in_float(tmp_path, target) -> None:
    """ORT runs Q/DQ around a Conv as QLinearConv only when the output is quantized too; a
    Conv whose input comes from a float op and whose output stays float would run as
    dequantize + float conv (slower than fp32, less accurate), so the export keeps it float.
    A Conv fed by an int8 op keeps its Q/DQ: that Q is the int8 output of the op before."""
    torch.manual_seed(0)
    model = TinyCNN().eval()
    images = torch.randn(32, 3, 32, 32)
    table, info, fp32 = calibrated_export(model, images, tmp_path)
    out = tmp_path / "int8.onnx"
    plan = write_qdq_onnx(fp32, out, table, QuantConfig(), rules(target), info)
    if target == "onnx":
        assert plan.kept_float == ["side"]  # image in, Hardswish out: nothing int8 around it
        assert any(n.startswith("side: no int8 kernel") for n in plan.not_honoured)
        assert sorted(plan.quantized) == ["conv1", "conv2", "head"]
    else:
        assert plan.kept_float == []
    proto = onnx.load(str(out))
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    side = next(n for n in proto.graph.node if n.name.startswith("/side/"))
    assert (producers.get(side.input[1]) == "DequantizeLinear") == (target != "onnx")
    only_side = QuantConfig.from_dict({"global": None, "module_name": {"side": {}}})
    if target == "onnx":
        with pytest.raises(EdgevtError, match="nothing this target can run in int8"):
            write_qdq_onnx(fp32, out, table, only_side, rules(target), info)
    else:
        assert write_qdq_onnx(fp32, out, table, only_side, rules(target), info).quantized == [
            "side"
        ]


def test_tensorrt_check_catches_a_bad_axis_and_one_sided_quantization(tiny, tmp_path) -> None:
    _, _, table, info, fp32 = tiny
    out = tmp_path / "trt.onnx"
    write_qdq_onnx(fp32, out, table, QuantConfig(), rules("tensorrt"), info)
    proto = onnx.load(str(out))
    conv_dq = next(
        n
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear" and "stem.0.weight" in n.input[0]
    )
    for a in conv_dq.attribute:
        if a.name == "axis":
            a.i = 1
    assert any("per-channel axis 1" in p for p in check_tensorrt_qdq(proto))


def test_calibration_cache_is_tensorrt_text_format(tmp_path) -> None:
    path = write_calibration_cache({"images": (-2.0, 2.54), "x": (0.0, 1.27)}, tmp_path / "c")
    lines = path.read_text().splitlines()
    assert lines[0].startswith("TRT-") and lines[0].endswith("-EntropyCalibration2")
    assert lines[1] == "images: 3ca3d70a"  # 2.54 / 127 = 0.02 as float32 bits
    assert lines[2] == "x: 3c23d70a"  # 0.01


def test_max_drop_keeps_the_fewest_sensitive_ops_in_float(tiny, tmp_path, calib_dir) -> None:
    from edgevt.quant.sensitivity import choose_float_layers

    model, _, _, info, fp32 = tiny
    flat = tmp_path / "unlabelled"  # no labels: the drop is measured as disagreement with fp32
    flat.mkdir()
    for src in sorted(calib_dir.rglob("*.JPEG"))[:48]:
        (flat / src.name).symlink_to(src)
    pp = info.preprocess
    table = calibrate_model(
        model,
        [torch.from_numpy(b) for b, _ in open_dataset(flat, require_labels=False).batches(pp, 16)],
        model_name="tiny",
        weights="random",
    )
    config = QuantConfig.from_dict({"op_type": {"matmul": {}}})
    loose = choose_float_layers(
        model, table, config, rules("onnx"), flat, pp, 100.0, fp32_onnx=fp32, progress=False
    )
    assert loose.kept_float == [] and loose.measure == "top-1 disagreement with fp32"
    # 7 ops, less the 2 stem convs that ORT runs in float anyway (no int8 output)
    assert [op for op, _ in loose.ranking] and len(loose.ranking) == 5
    strict = choose_float_layers(
        model, table, config, rules("onnx"), flat, pp, 0.0, fp32_onnx=fp32, progress=False
    )
    assert strict.drop_chosen == 0.0
    if strict.drop_all_int8 > 0:
        assert strict.kept_float == [op for op, _ in strict.ranking][: len(strict.kept_float)]
        assert 0 < len(strict.kept_float) <= 5
