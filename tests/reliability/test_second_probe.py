"""Bad inputs a second adversarial probe found (652 cases, made without seeing this corpus;
86 % clean before these fixes): refused exports that left files behind, damaged records the
report crashed on, runtimes' own exceptions, preprocessing metadata, NaN checkpoints blamed
on fusion, folders and files mistaken for each other, damaged pipeline state, plug-ins and
profiles that crashed, a permission problem that advised deleting the run's records."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability.conftest import (
    case_table,
    copy_into,
    edited_table,
    refused_leaving_nothing,
)

CASES, case = case_table()



def _checkpoint(world, d, edit: Callable[[dict], None]) -> Path:
    import torch

    from edgevt.models import load_model

    state = load_model(world.model).model.state_dict()
    edit(state)
    torch.save(state, d / "w.pth")
    return d / "w.pth"


# --- weights no export can use: named as such, not blamed on fusion
@case("NaN or inf")
def export_a_checkpoint_holding_nan(world, d):
    ckpt = _checkpoint(world, d, lambda s: s["conv2.weight"].view(-1).__setitem__(0, float("nan")))
    return ["export", world.model, "--checkpoint", ckpt, "-o", d / "run"]


@case("NaN or inf")
def fuse_a_checkpoint_holding_inf(world, d):
    ckpt = _checkpoint(world, d, lambda s: s["head.weight"].view(-1).__setitem__(5, float("inf")))
    return ["fuse", world.model, "--checkpoint", ckpt, "-o", d / "run"]


@case("negative BatchNorm variance")
def calibrate_a_checkpoint_with_negative_variance(world, d):
    ckpt = _checkpoint(world, d, lambda s: s["bn.running_var"].fill_(-1.0))
    return ["calibrate", world.model, "--checkpoint", ckpt, "--data", world.images,
            "-o", d / "t.json"]  # fmt: skip


# --- a refused export leaves nothing (it used to leave fused.pt, model.onnx, the table copy)

@case("departs grossly")
def export_with_huge_ranges_and_no_observed_values(world, d):
    def edit(t):
        for r in t["activations"].values():
            r.update(min=-1e4, max=1e4)
            r.pop("observed_min", None), r.pop("observed_max", None)

    return ["export", world.model, "--int8", "--calib-table", edited_table(world, d, edit),
            "-o", d / "run"]  # fmt: skip


@case("lacks")
def export_with_a_table_missing_a_tensor(world, d):
    def edit(t):
        t["activations"].pop("conv2:in0")

    return ["export", world.model, "--int8", "--calib-table", edited_table(world, d, edit),
            "-o", d / "run"]  # fmt: skip


@case("source must be an object")
def export_with_a_table_whose_source_is_a_string(world, d):
    table = edited_table(world, d, lambda t: t.update(source="imagenet"))
    return ["export", world.model, "--int8", "--calib-table", table, "-o", d / "run"]


@case("is a folder")
def export_into_a_run_whose_model_onnx_is_a_folder(world, d):
    (d / "run" / "model.onnx").mkdir(parents=True)
    return ["export", world.model, "-o", d / "run"]


# --- files and folders mistaken for each other
@case("is a folder, not a file")
def export_with_a_table_that_is_a_folder(world, d):
    (d / "t.json").mkdir()
    return ["export", world.model, "--int8", "--calib-table", d / "t.json", "-o", d / "run"]


@case("is a file, not a folder")
def calibrate_on_an_image_file(world, d):
    image = next(p for p in world.images.rglob("*") if p.is_file())
    return ["calibrate", world.model, "--data", image, "-o", d / "t.json"]


@case("is a folder, not a file")
def eval_with_labels_that_are_a_folder(world, d):
    return ["eval", world.onnx, "--data", world.flat, "--labels", world.images]


@case("is a file, not a folder")
def report_of_a_file(world, d):
    return ["report", world.onnx, "-o", d / "report"]


@case("is a folder, not a file")
def report_with_device_results_that_are_a_folder(world, d):
    return ["report", world.run, "--device-results", world.images, "-o", d / "report"]


@case("is a folder, not a file")
def check_a_folder(world, d):
    (d / "m.onnx").mkdir()
    return ["check", d / "m.onnx"]


# --- artifacts a runtime refuses, and preprocessing no image can be prepared with
def _metadata(world, d, edit: Callable[[dict], None]) -> Path:
    import onnx

    proto = onnx.load(str(world.onnx))
    for prop in proto.metadata_props:
        if prop.key == "edgevt":
            meta = json.loads(prop.value)
            edit(meta)
            prop.value = json.dumps(meta)
    onnx.save(proto, str(d / "m.onnx"))
    return d / "m.onnx"


@case("could not run")
def eval_an_onnx_whose_metadata_says_another_input_size(world, d):
    m = _metadata(world, d, lambda m: m["preprocess"].update(input_size=64))
    return ["eval", m, "--data", world.images]


@case("could not load")
def eval_an_onnx_whose_metadata_names_an_unknown_optimization(world, d):
    m = _metadata(world, d, lambda m: m.setdefault("extra", {}).update(ort_optimization="max"))
    return ["eval", m, "--data", world.images]


@case("could not run")
def bench_an_onnx_whose_metadata_says_another_input_size(world, d):
    m = _metadata(world, d, lambda m: m["preprocess"].update(input_size=64))
    return ["bench", m, "--seconds", "0.01", "--iterations", "1", "-o", d / "b"]


@case("crop_pct")
def eval_an_onnx_with_crop_pct_zero(world, d):
    return ["eval", _metadata(world, d, lambda m: m["preprocess"].update(crop_pct=0)),
            "--data", world.images]  # fmt: skip


@case("std")
def eval_an_onnx_with_std_zero(world, d):
    return ["eval", _metadata(world, d, lambda m: m["preprocess"].update(std=[0, 0, 0])),
            "--data", world.images]  # fmt: skip


@case("empty PredictionString")
def eval_with_a_solution_csv_without_predictions(world, d):
    rows = "".join(f"{p.stem},\n" for p in sorted(world.flat.iterdir()))
    (d / "sol.csv").write_text("ImageId,PredictionString\n" + rows)
    return ["eval", world.onnx, "--data", world.flat, "--labels", d / "sol.csv"]


# --- damaged records the report crashed on
def _report_of(world, d, edit: Callable[[dict], None]) -> list:
    run = copy_into(world.run, d)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["stages"]["eval"] = {"inputs": {}, "settings": {}, "artifacts": {}, "results": {
        "evaluations": {"pytorch_fp32": {"top1": 50.0, "top5": 75.0, "n": 4},
                        "model.onnx": {"top1": 50.0, "top5": 75.0, "n": 4,
                                       "vs_pytorch_fp32": {"cosine": 1.0}}}}}  # fmt: skip
    edit(manifest)
    (run / "manifest.json").write_text(json.dumps(manifest))
    return ["report", run, "-o", d / "report"]


def _evals(m: dict) -> dict:
    return m["stages"]["eval"]["results"]["evaluations"]


@case("damaged record")
def report_a_top1_that_is_a_word(world, d):
    return _report_of(world, d, lambda m: _evals(m)["model.onnx"].update(top1="high"))


@case("damaged record")
def report_a_top1_that_is_nan(world, d):
    return _report_of(world, d, lambda m: _evals(m)["model.onnx"].update(top1=float("nan")))


@case("damaged record")
def report_a_comparison_that_is_a_string(world, d):
    return _report_of(world, d, lambda m: _evals(m)["model.onnx"].update(vs_pytorch_fp32="x"))


@case("damaged record")
def report_a_sensitivity_ranking_that_is_garbage(world, d):
    run = copy_into(world.run, d)
    (run / "sensitivity.json").write_text(json.dumps({"ranking": [{"op": 3, "kl": "big"}]}))
    return ["report", run, "-o", d / "report"]


@case("lack")
def report_device_results_whose_backend_is_a_number(world, d):
    from tests.reliability.test_fresh_probe import GOOD_DEVICE

    data = json.loads(json.dumps(GOOD_DEVICE))
    data["results"][0]["backend"] = 3
    (d / "device.json").write_text(json.dumps(data))
    return ["report", world.run, "--device-results", d / "device.json", "-o", d / "report"]


# --- configs, profiles, plug-ins
def _pipeline(world, d, state: str) -> list:
    (d / "out").mkdir()
    (d / "out" / "pipeline.json").write_text(state)
    (d / "run.toml").write_text(f'out = "out"\n[model]\nname = "{world.model}"\n[[export]]\n')
    return ["run", d / "run.toml"]


@case("pipeline.json")
def run_whose_state_is_not_json(world, d):
    return _pipeline(world, d, "{ nope")


@case("pipeline.json")
def run_whose_state_stages_are_a_list(world, d):
    return _pipeline(world, d, '{"stages": [1, 2]}')


@case("max_drop")
def run_with_max_drop_500(world, d):
    (d / "run.toml").write_text(f'out = "out"\n[model]\nname = "{world.model}"\n'
                                '[calibration]\ndata = "imgs"\n'
                                '[[export]]\nint8 = true\nmax_drop = 500.0\n')  # fmt: skip
    shutil.copytree(world.images, d / "imgs")
    return ["run", d / "run.toml"]


@case("target names")
def bundle_with_a_profile_of_nested_targets(world, d):
    text = (Path(__file__).parents[2] / "targets" / "x86-host.toml").read_text()
    (d / "mine.toml").write_text(text.replace('targets = ["onnx"', 'targets = [["onnx"]'))
    return ["bundle", world.run, "--device", d / "mine.toml", "--samples", "1",
            "--data", world.images, "-o", d / "bundle"]  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_second_probe_input(name, world, expect_error) -> None:
    refused_leaving_nothing(CASES[name], f"second-{name}", world, expect_error)


def test_a_plugin_that_raises_is_one_line(world, tmp_path, capsys, monkeypatch) -> None:
    from edgevt import targets
    from tests.reliability.conftest import assert_clean_error, cli

    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('half-installed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("EDGEVT_TARGET_MODULES", "broken_plugin")
    monkeypatch.setattr(targets, "_loaded", False)
    code, err = cli(["targets"], capsys)
    assert_clean_error(code, err, "half-installed")
    monkeypatch.setattr(targets, "_loaded", False)
    monkeypatch.delenv("EDGEVT_TARGET_MODULES")
    targets.all_targets()


def test_an_unreadable_manifest_is_a_permission_problem(world, tmp_path, capsys,
                                                        monkeypatch) -> None:  # fmt: skip
    """Not "corrupt, remove it": that advice would delete a run's records over a chmod.
    (Tests run as root here, which reads any file: the refusal is simulated.)"""
    import errno

    from tests.reliability.conftest import assert_clean_error, cli

    run = copy_into(world.run, tmp_path)
    real = Path.read_bytes

    def withheld(self: Path) -> bytes:
        if self == run / "manifest.json":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", withheld)
    code, err = cli(["report", run, "-o", tmp_path / "report"], capsys)
    line = assert_clean_error(code, err, "permission denied")
    assert "remove it" not in line
