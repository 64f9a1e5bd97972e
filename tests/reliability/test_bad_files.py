"""Missing, empty, corrupt and misnamed files: data folders, label files, artifacts,
checkpoints, calibration tables and quant configs, each made in code by the case itself."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability.conftest import case_table

CASES, case = case_table()  # case id -> (make(world, dir) -> argv, keyword)


def _garbage(path: Path, n: int = 4096) -> Path:
    """Random bytes, the same ones every run (seeded by the file's name and folder)."""
    import random

    path.write_bytes(random.Random(f"{path.parent.name}/{path.name}").randbytes(n))
    return path


def _table(world, d: Path, edit: Callable[[dict], None]) -> Path:
    data = json.loads(world.table.read_text())
    edit(data)
    path = d / "table.json"
    path.write_text(json.dumps(data))
    return path


def _int8(world, out: Path, *extra) -> list:
    return ["export", world.model, "--int8", "-o", out, *extra]


# --- data folders and labels (eval, calibrate, export --calib / --data / --eval-data)
@case("does not exist")
def eval_data_missing(world, d):
    return ["eval", world.onnx, "--data", d / "nowhere"]


@case("not a folder")
def eval_data_is_a_file(world, d):
    return ["eval", world.onnx, "--data", world.onnx]


@case("no images")
def eval_data_empty(world, d):
    (d / "empty").mkdir()
    return ["eval", world.onnx, "--data", d / "empty"]


@case("no images")
def eval_data_only_text_files(world, d):
    (d / "txt").mkdir()
    (d / "txt" / "readme.txt").write_text("hello")
    return ["eval", world.onnx, "--data", d / "txt"]


@case("no labels")
def eval_flat_folder_without_labels(world, d):
    return ["eval", world.onnx, "--data", world.flat]


@case("does not exist")
def eval_labels_missing(world, d):
    return ["eval", world.onnx, "--data", world.flat, "--labels", d / "labels.txt"]


@case("labels")
def eval_labels_garbage(world, d):
    return ["eval", world.onnx, "--data", world.flat, "--labels", _garbage(d / "labels.txt")]


@case("labels")
def eval_labels_unknown_wnids(world, d):
    lines = [f"{p.name} n99999999" for p in sorted(world.flat.iterdir())]
    (d / "labels.txt").write_text("\n".join(lines) + "\n")
    return ["eval", world.onnx, "--data", world.flat, "--labels", d / "labels.txt"]


@case("labels")
def eval_labels_empty_file(world, d):
    (d / "labels.txt").write_text("")
    return ["eval", world.onnx, "--data", world.flat, "--labels", d / "labels.txt"]


@case("class")
def eval_imagefolder_unknown_class_names(world, d):
    (d / "cats").mkdir()
    src = next(world.flat.iterdir())
    (d / "cats" / src.name).write_bytes(src.read_bytes())
    return ["eval", world.onnx, "--data", d]


@case("does not exist")
def calibrate_data_missing(world, d):
    return ["calibrate", world.model, "--data", d / "nowhere", "-o", d / "t.json"]


@case("no images")
def calibrate_data_empty(world, d):
    (d / "empty").mkdir()
    return ["calibrate", world.model, "--data", d / "empty", "-o", d / "t.json"]


@case("does not exist")
def export_calib_missing(world, d):
    return _int8(world, d / "run", "--calib", d / "nowhere")


@case("no images")
def export_calib_empty(world, d):
    (d / "empty").mkdir()
    return _int8(world, d / "run", "--calib", d / "empty")


@case("does not exist")
def export_check_data_missing(world, d):
    return ["export", world.model, "--data", d / "nowhere", "-o", d / "run"]


@case("does not exist")
def export_eval_data_missing(world, d):
    return ["export", world.model, "--eval-data", d / "nowhere", "-o", d / "run"]


@case("does not exist")
def qat_data_missing(world, d):
    return ["qat", world.model, "--data", d / "no", "--calib-table", world.table, "-o", d / "r"]


# --- artifacts (eval, bench, check, bundle)
@case("does not exist")
def eval_artifact_missing(world, d):
    return ["eval", d / "model.onnx", "--data", world.images]


@case("corrupt")
def eval_onnx_zero_bytes(world, d):
    (d / "model.onnx").write_bytes(b"")
    return ["eval", d / "model.onnx", "--data", world.images]


@case("corrupt")
def eval_onnx_random_bytes(world, d):
    return ["eval", _garbage(d / "model.onnx"), "--data", world.images]


@case("corrupt")
def eval_onnx_truncated(world, d):
    data = world.onnx.read_bytes()
    (d / "model.onnx").write_bytes(data[: len(data) // 2])
    return ["eval", d / "model.onnx", "--data", world.images]


@case("metadata")
def eval_onnx_without_edgevt_metadata(world, d):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 32])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph), str(d / "plain.onnx"))
    return ["eval", d / "plain.onnx", "--data", world.images]


@case(".pb")
def eval_unknown_suffix(world, d):
    return ["eval", _garbage(d / "model.pb"), "--data", world.images]


@case("corrupt")
def eval_tflite_random_bytes(world, d):
    pytest.importorskip("ai_edge_litert", reason="LiteRT not installed")
    return ["eval", _garbage(d / "model.tflite"), "--data", world.images]


@case("corrupt")
def eval_tflite_zero_bytes(world, d):
    pytest.importorskip("ai_edge_litert", reason="LiteRT not installed")
    (d / "model.tflite").write_bytes(b"")
    return ["eval", d / "model.tflite", "--data", world.images]


@case("mlpackage")
def eval_mlpackage_empty_folder(world, d):
    (d / "model.mlpackage").mkdir()
    return ["eval", d / "model.mlpackage", "--data", world.images]


@case("empty folder")
def eval_openvino_empty_folder(world, d):
    (d / "model.openvino").mkdir()
    return ["eval", d / "model.openvino", "--data", world.images]


@case("not an OpenVINO IR folder")
def eval_openvino_folder_without_xml(world, d):
    (d / "model.openvino").mkdir()
    (d / "model.openvino" / "model.bin").write_bytes(b"\0" * 64)
    return ["eval", d / "model.openvino", "--data", world.images]


@case("not readable XML")
def eval_openvino_garbage_xml(world, d):
    (d / "model.openvino").mkdir()
    _garbage(d / "model.openvino" / "model.xml")
    return ["eval", d / "model.openvino", "--data", world.images]


@case("corrupt")
def eval_fused_random_bytes(world, d):
    return ["eval", _garbage(d / "fused.pt"), "--data", world.images]


@case("folder")
def eval_artifact_is_a_plain_folder(world, d):
    (d / "model.onnx").mkdir()
    return ["eval", d / "model.onnx", "--data", world.images]


@case("does not exist")
def bench_artifact_missing(world, d):
    return ["bench", d / "model.onnx", "--seconds", "0.01", "-o", d / "b"]


@case("corrupt")
def bench_onnx_random_bytes(world, d):
    return ["bench", _garbage(d / "model.onnx"), "--seconds", "0.01", "-o", d / "b"]


@case("corrupt")
def bench_onnx_truncated(world, d):
    data = world.onnx.read_bytes()
    (d / "model.onnx").write_bytes(data[: len(data) // 3])
    return ["bench", d / "model.onnx", "--seconds", "0.01", "-o", d / "b"]


@case("does not exist")
def check_missing(world, d):
    return ["check", d / "model.onnx"]


@case("corrupt")
def check_random_bytes(world, d):
    return ["check", _garbage(d / "model.onnx")]


@case("corrupt")
def check_truncated(world, d):
    data = world.onnx.read_bytes()
    (d / "model.onnx").write_bytes(data[: len(data) // 2])
    return ["check", d / "model.onnx"]


# --- checkpoints (fuse, export, eval of a zoo model)
def _ckpt(world, d, make: Callable[[Path], None], cmd: str = "fuse") -> list:
    path = d / "weights.pth"
    make(path)
    if cmd == "fuse":
        return ["fuse", world.model, "--checkpoint", path, "-o", d / "run"]
    if cmd == "export":
        return ["export", world.model, "--checkpoint", path, "-o", d / "run"]
    return ["eval", world.model, "--checkpoint", path, "--data", world.images]


@case("does not exist")
def fuse_checkpoint_missing(world, d):
    return ["fuse", world.model, "--checkpoint", d / "none.pth", "-o", d / "run"]


@case("does not exist")
def export_checkpoint_missing(world, d):
    return ["export", world.model, "--checkpoint", d / "none.pth", "-o", d / "run"]


@case("does not exist")
def eval_checkpoint_missing(world, d):
    return ["eval", world.model, "--checkpoint", d / "none.pth", "--data", world.images]


@case("checkpoint")
def fuse_checkpoint_empty(world, d):
    return _ckpt(world, d, lambda p: p.write_bytes(b""))


@case("checkpoint")
def fuse_checkpoint_random_bytes(world, d):
    return _ckpt(world, d, _garbage)


@case("checkpoint")
def export_checkpoint_random_bytes(world, d):
    return _ckpt(world, d, _garbage, "export")


@case("checkpoint")
def eval_checkpoint_random_bytes(world, d):
    return _ckpt(world, d, _garbage, "eval")


@case("truncated")
def fuse_checkpoint_truncated(world, d):
    import torch

    def make(p):
        torch.save({"w": torch.zeros(4096)}, p)
        p.write_bytes(p.read_bytes()[:2000])

    return _ckpt(world, d, make)


@case("tiny_cnn")
def fuse_checkpoint_of_another_model(world, d):
    import torch

    return _ckpt(world, d, lambda p: torch.save({"blocks.0.weight": torch.zeros(3)}, p))


@case("shape")
def fuse_checkpoint_wrong_shapes(world, d):
    import torch

    from tests.helpers import _build

    def make(p):
        state = {k: torch.zeros(*v.shape[:-1], v.shape[-1] + 1) if v.ndim else v
                 for k, v in _build().state_dict().items()}  # fmt: skip
        torch.save(state, p)

    return _ckpt(world, d, make)


@case("checkpoint")
def fuse_checkpoint_a_list(world, d):
    import torch

    return _ckpt(world, d, lambda p: torch.save([1, 2, 3], p))


@case("checkpoint")
def fuse_checkpoint_pickled_code(world, d):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch /tmp/edgevt-pwned",))

    return _ckpt(world, d, lambda p: p.write_bytes(pickle.dumps(Evil())))


@case("safetensors")
def fuse_safetensors_garbage(world, d):
    path = _garbage(d / "weights.safetensors")
    return ["fuse", world.model, "--checkpoint", path, "-o", d / "run"]


@case("checkpoint")
def fuse_checkpoint_empty_folder(world, d):
    (d / "hf").mkdir()
    return ["fuse", world.model, "--checkpoint", d / "hf", "-o", d / "run"]


@case("config.json")
def fuse_hf_folder_bad_config_levit(world, d):
    (d / "hf").mkdir()
    (d / "hf" / "config.json").write_text("{ not json")
    return ["fuse", "levit_128s", "--checkpoint", d / "hf", "-o", d / "run"]


@case("config.json")
def fuse_hf_folder_bad_config_cvt(world, d):
    (d / "hf").mkdir()
    (d / "hf" / "config.json").write_text("[1, 2")
    return ["fuse", "cvt_13", "--checkpoint", d / "hf", "-o", d / "run"]


@case("config.json")
def fuse_hf_folder_config_is_a_list(world, d):
    (d / "hf").mkdir()
    (d / "hf" / "config.json").write_text("[1, 2]")
    return ["fuse", "levit_128s", "--checkpoint", d / "hf", "-o", d / "run"]


@case("weights")
def fuse_hf_folder_without_weights(world, d):
    (d / "hf").mkdir()
    (d / "hf" / "config.json").write_text(json.dumps({"model_type": "levit"}))
    return ["fuse", "levit_128s", "--checkpoint", d / "hf", "-o", d / "run"]


@case("truncated")
def fuse_fused_file_truncated(world, d):
    data = world.fused.read_bytes()
    (d / "fused.pt").write_bytes(data[: len(data) // 2])
    return ["fuse", world.model, "--checkpoint", d / "fused.pt", "-o", d / "run"]


@case("tiny_cnn")
def fuse_fused_file_of_another_model(world, d):
    return ["fuse", "levit_128s", "--checkpoint", world.fused, "-o", d / "run"]


# --- calibration tables (export --calib-table, qat --calib-table)
@case("does not exist")
def table_missing(world, d):
    return _int8(world, d / "run", "--calib-table", d / "none.json")


@case("not json")
def table_not_json(world, d):
    (d / "t.json").write_text("{ broken")
    return _int8(world, d / "run", "--calib-table", d / "t.json")


@case("not an object")
def table_a_json_array(world, d):
    (d / "t.json").write_text("[1, 2, 3]")
    return _int8(world, d / "run", "--calib-table", d / "t.json")


@case("not json")
def table_random_bytes(world, d):
    return _int8(world, d / "run", "--calib-table", _garbage(d / "t.json"))


@case("format")
def table_other_format_version(world, d):
    return _int8(world, d / "run", "--calib-table",
                 _table(world, d, lambda t: t.update(format="edgevt.calibration/9")))  # fmt: skip


@case("format")
def table_without_format(world, d):
    return _int8(world, d / "run", "--calib-table", _table(world, d, lambda t: t.pop("format")))


def _edit_range(key: str, **values):
    def edit(t):
        t["activations"]["conv:out"].update(values)

    return edit


@case("conv:out")
def table_infinite_range(world, d):
    return _int8(world, d / "run", "--calib-table",
                 _table(world, d, _edit_range("", max=float("inf"))))  # fmt: skip


@case("conv:out")
def table_nan_range(world, d):
    return _int8(world, d / "run", "--calib-table",
                 _table(world, d, _edit_range("", min=float("nan"))))  # fmt: skip


@case("conv:out")
def table_inverted_range(world, d):
    return _int8(world, d / "run", "--calib-table",
                 _table(world, d, _edit_range("", min=3.0, max=-3.0)))  # fmt: skip


@case("conv:out")
def table_all_zero_range(world, d):
    return _int8(world, d / "run", "--calib-table",
                 _table(world, d, _edit_range("", min=0.0, max=0.0)))  # fmt: skip


@case("conv:out")
def table_range_a_string(world, d):
    return _int8(world, d / "run", "--calib-table",
                 _table(world, d, _edit_range("", max="big")))  # fmt: skip


@case("conv")
def table_negative_weight_amax(world, d):
    def edit(t):
        t["weight_amax"]["conv"][0] = -1.0

    return _int8(world, d / "run", "--calib-table", _table(world, d, edit))


@case("conv")
def table_nan_weight_amax(world, d):
    def edit(t):
        t["weight_amax"]["conv"][0] = float("nan")

    return _int8(world, d / "run", "--calib-table", _table(world, d, edit))


@case("levit_128s")
def table_of_another_model(world, d):
    return _int8(world, d / "run", "--calib-table",
                 _table(world, d, lambda t: t.update(model="levit_128s")))  # fmt: skip


@case("conv2")
def table_missing_an_op(world, d):
    def edit(t):
        for key in [k for k in t["activations"] if k.startswith("conv2:")]:
            del t["activations"][key]

    return _int8(world, d / "run", "--calib-table", _table(world, d, edit))


@case("activations")
def table_activations_a_list(world, d):
    return _int8(world, d / "run", "--calib-table",
                 _table(world, d, lambda t: t.update(activations=[1, 2])))  # fmt: skip


@case("not json")
def qat_table_not_json(world, d):
    (d / "t.json").write_text("nope")
    return ["qat", world.model, "--data", world.images, "--calib-table", d / "t.json",
            "-o", d / "run"]  # fmt: skip


@case("conv:out")
def qat_table_inverted(world, d):
    return ["qat", world.model, "--data", world.images, "--calib-table",
            _table(world, d, _edit_range("", min=3.0, max=-3.0)), "-o", d / "run"]  # fmt: skip


# --- quant configs (export --quant-config, qat --quant-config)
def _config(world, d, text: str) -> list:
    (d / "q.json").write_text(text)
    return _int8(world, d / "run", "--calib-table", world.table, "--quant-config", d / "q.json")


@case("does not exist")
def quant_config_missing(world, d):
    return _int8(world, d / "run", "--calib-table", world.table, "--quant-config", d / "q.json")


@case("not json")
def quant_config_not_json(world, d):
    return _config(world, d, "{ global: per_tensor }")


@case("json object")
def quant_config_an_array(world, d):
    return _config(world, d, '["per_tensor"]')


@case("globl")
def quant_config_unknown_key(world, d):
    return _config(world, d, '{"globl": {"weights": "per_tensor"}}')


@case("per_row")
def quant_config_unknown_weights_mode(world, d):
    return _config(world, d, '{"global": {"weights": "per_row"}}')


@case("bogus")
def quant_config_unknown_setting(world, d):
    return _config(world, d, '{"global": {"bogus": 1}}')


@case("conv3d")
def quant_config_unknown_op_type(world, d):
    return _config(world, d, '{"op_type": {"conv3d": null}}')


@case("regex")
def quant_config_bad_regex(world, d):
    return _config(world, d, '{"module_name": {"blocks[": null}}')


@case("global")
def quant_config_global_a_string(world, d):
    return _config(world, d, '{"global": "per_tensor"}')


@case("op_type")
def quant_config_op_type_a_list(world, d):
    return _config(world, d, '{"op_type": ["matmul"]}')


@case("not json")
def quant_config_random_bytes(world, d):
    _garbage(d / "q.json")
    return _int8(world, d / "run", "--calib-table", world.table, "--quant-config", d / "q.json")


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_file_is_one_clear_line(name, world, expect_error) -> None:
    make, keyword = CASES[name]
    d = world.path("files-" + name)
    d.mkdir()
    expect_error(make(world, d), keyword, folder=d)
    assert not (d / "run").exists() or not any((d / "run").glob("*.onnx")), "artifact written"
    assert not Path("/tmp/edgevt-pwned").exists(), "a pickled checkpoint ran code"
