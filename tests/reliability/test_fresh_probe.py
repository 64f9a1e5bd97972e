"""Bad inputs an adversarial probe found after the first corpus (it had not seen it): data
loss through `bundle --force`, non-finite QAT settings, tampered metadata and fused models,
damaged result files and device profiles, configs and flags the CLI refused elsewhere."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability.conftest import case_table, copy_into, edited_table

CASES, case = case_table()



# --- bundle --force must never replace what is not a bundle
def _bundle(world, run, out, *extra) -> list:
    return ["bundle", run, "--device", "x86-host", "--samples", "1", "--data", world.images,
            "-o", out, "--force", *extra]  # fmt: skip


@case("run directory")
def bundle_into_its_own_run_directory(world, d):
    run = copy_into(world.run, d)
    return _bundle(world, run, run)


@case("run directory")
def bundle_into_the_folder_holding_the_run(world, d):
    run = copy_into(world.run, d)
    return _bundle(world, run, d)


@case("--data folder")
def bundle_into_the_data_folder(world, d):
    images = copy_into(world.images, d, "images")
    return ["bundle", world.run, "--device", "x86-host", "--samples", "1", "--data", images,
            "-o", images, "--force"]  # fmt: skip


@case("not an edgevt bundle")
def bundle_force_over_a_folder_of_the_users(world, d):
    (d / "mine").mkdir()
    (d / "mine" / "thesis.tex").write_text("years of work")
    return _bundle(world, world.run, d / "mine")


# --- QAT with settings that can only diverge
def _qat(world, d, *extra) -> list:
    return ["qat", world.model, "--data", world.images, "--calib-table", world.table,
            "--steps", "1", "--batch", "2", "--device", "cpu", "-o", d / "run", *extra]  # fmt: skip


@case("finite")
def qat_lr_inf(world, d):
    return _qat(world, d, "--lr", "inf")


@case("finite")
def qat_range_lr_nan(world, d):
    return _qat(world, d, "--range-lr", "nan")


@case("finite")
def qat_temperature_inf(world, d):
    return _qat(world, d, "--temperature", "inf")


@case("finite")
def qat_clip_lr_inf(world, d):
    return _qat(world, d, "--clip-lr", "inf")


@case("finite")
def qat_lr_nan_step_unit(world, d):
    return _qat(world, d, "--lr", "nan", "--lr-unit", "step")


# --- tampered metadata of an exported file
def _onnx_with_metadata(world, d, value: str) -> Path:
    import onnx

    proto = onnx.load(str(world.onnx))
    for prop in proto.metadata_props:
        if prop.key == "edgevt":
            prop.value = value
    path = d / "model.onnx"
    onnx.save(proto, str(path))
    return path


def _metadata(world) -> dict:
    from edgevt.targets import read_artifact_info

    return json.loads(read_artifact_info(world.onnx).to_json())


@case("corrupt edgevt metadata")
def eval_onnx_metadata_not_json(world, d):
    return ["eval", _onnx_with_metadata(world, d, "{garbage"), "--data", world.images]


@case("corrupt edgevt metadata")
def eval_onnx_metadata_without_preprocess(world, d):
    meta = _metadata(world)
    meta.pop("preprocess")
    return ["eval", _onnx_with_metadata(world, d, json.dumps(meta)), "--data", world.images]


@case("corrupt edgevt metadata")
def eval_onnx_metadata_input_size_a_word(world, d):
    meta = _metadata(world)
    meta["preprocess"]["input_size"] = "big"
    return ["eval", _onnx_with_metadata(world, d, json.dumps(meta)), "--data", world.images]


@case("corrupt edgevt metadata")
def eval_onnx_metadata_a_list(world, d):
    return ["eval", _onnx_with_metadata(world, d, "[1, 2]"), "--data", world.images]


@case("corrupt edgevt metadata")
def bundle_of_a_run_with_tampered_metadata(world, d):
    run = copy_into(world.run, d)
    (run / "model.onnx").unlink()
    shutil.move(_onnx_with_metadata(world, d, "{garbage"), run / "model.onnx")
    return ["bundle", run, "--device", "x86-host", "--samples", "1", "--data", world.images,
            "-o", d / "bundle"]  # fmt: skip


# --- tampered fused.pt
def _fused(world, d, edit: Callable[[dict], None]) -> Path:
    import torch

    saved = torch.load(world.fused, weights_only=True)
    edit(saved)
    path = d / "fused.pt"
    torch.save(saved, path)
    return path


@case("do not fit")
def eval_fused_of_another_model_name(world, d):
    return ["eval", _fused(world, d, lambda s: s.update(edgevt_fused="levit_128s")),
            "--data", world.images]  # fmt: skip


@case("damaged")
def eval_fused_model_name_a_number(world, d):
    return ["eval", _fused(world, d, lambda s: s.update(edgevt_fused=7)), "--data", world.images]


@case("damaged")
def eval_fused_without_weights(world, d):
    return ["eval", _fused(world, d, lambda s: s.update(state_dict=None)), "--data", world.images]


@case("benchmarking")
def bench_a_corrupt_fused_file_says_it_once(world, d):
    path = d / "fused.pt"
    path.write_bytes(b"\x80\x02garbage" * 50)
    return ["bench", path, "--seconds", "0.01", "-o", d / "b"]


# --- damaged result files given to edgevt report
GOOD_DEVICE = {
    "format": "edgevt.device-results/1", "device": "raspberry-pi-5",
    "host": {"machine": "aarch64"}, "finished": "2026-12-04T19:51:22+00:00",
    "results": [{"artifact": "model.onnx", "precision": "fp32", "backend": "onnxruntime",
                 "threads": 2, "batch": 1, "p50_ms": 1.0, "p90_ms": 1.2,
                 "check": {"passed": True}}],
}  # fmt: skip


def _device(world, d, **changes) -> list:
    data = json.loads(json.dumps(GOOD_DEVICE))
    for key, value in changes.items():
        if key.startswith("row_"):
            data["results"][0][key[4:]] = value
        else:
            data[key] = value
    (d / "device.json").write_text(json.dumps(data))
    return ["report", world.run, "--device-results", d / "device.json", "-o", d / "report"]


@case("device must be")
def device_results_device_a_number(world, d):
    return _device(world, d, device=5)


@case("host")
def device_results_host_a_list(world, d):
    return _device(world, d, host=[1])


@case("latency")
def device_results_p50_nan(world, d):
    return _device(world, d, row_p50_ms=float("nan"))


@case("latency")
def device_results_p50_negative(world, d):
    return _device(world, d, row_p50_ms=-1)


@case("threads")
def device_results_threads_0(world, d):
    return _device(world, d, row_threads=0)


@case("threads")
def device_results_threads_true(world, d):
    return _device(world, d, row_threads=True)


@case("batch")
def device_results_batch_0(world, d):
    return _device(world, d, row_batch=0)


@case("non-empty")
def device_results_without_rows(world, d):
    return _device(world, d, results=[])


@case("latency")
def report_bench_result_p50_nan(world, d):
    run = copy_into(world.run, d)
    from edgevt import api

    api.bench([run / "model.onnx"], threads=[1], seconds=0.01, iterations=1, warmup=0)
    result = next((run / "bench").glob("*.json"))
    data = json.loads(result.read_text())
    data["p50_ms"] = float("nan")
    result.write_text(json.dumps(data))
    return ["report", run, "-o", d / "report"]


# --- device profiles with values a device would choke on
def _profile(world, d, edit: Callable[[str], str]) -> list:
    text = (Path(__file__).parents[2] / "targets" / "x86-host.toml").read_text()
    (d / "mine.toml").write_text(edit(text))
    return ["bundle", world.run, "--device", d / "mine.toml", "--samples", "1",
            "--data", world.images, "-o", d / "bundle"]  # fmt: skip


@case("threads")
def profile_threads_a_word(world, d):
    return _profile(world, d, lambda t: t.replace("threads = [1, 2]", 'threads = "two"'))


@case("threads")
def profile_threads_zero(world, d):
    return _profile(world, d, lambda t: t.replace("threads = [1, 2]", "threads = [0]"))


@case("int4")
def profile_precision_unknown(world, d):
    return _profile(world, d, lambda t: t.replace('precisions = ["fp32", "int8"]',
                                                  'precisions = ["int4"]'))  # fmt: skip


@case("name")
def profile_name_a_number(world, d):
    return _profile(world, d, lambda t: t.replace('name = "x86-host"', "name = 5"))


# --- edgevt run configs with what the CLI refuses
def _config(world, d, extra: str, model_extra: str = "") -> list:
    text = (f'out = "out"\n[model]\nname = "{world.model}"\n{model_extra}'
            f'[[export]]\ntarget = "onnx"\n{extra}')  # fmt: skip
    (d / "run.toml").write_text(text)
    return ["run", d / "run.toml"]


@case("finite")
def config_bench_seconds_inf(world, d):
    return _config(world, d, "[bench]\nseconds = inf\n")


@case("finite")
def config_max_drop_nan(world, d):
    return _config(world, d, "max_drop = nan\n")


@case("0 or more")
def config_seed_negative(world, d):
    return _config(world, d, "", "seed = -1\n")


# --- flags that would be silently ignored
@case("--method")
def export_method_without_int8(world, d):
    return ["export", world.model, "--method", "mse", "-o", d / "run"]


@case("--calib-size")
def export_calib_size_without_int8(world, d):
    return ["export", world.model, "--calib-size", "4", "-o", d / "run"]


@case("--method")
def export_method_with_a_table(world, d):
    return ["export", world.model, "--int8", "--calib-table", world.table, "--method", "mse",
            "-o", d / "run"]  # fmt: skip


@case("--limit")
def export_limit_without_eval_data(world, d):
    return ["export", world.model, "--limit", "3", "-o", d / "run"]


@case("--quant-config")
def export_quant_config_without_int8(world, d):
    (d / "q.json").write_text('{"global": {"weights": "per_tensor"}}')
    return ["export", world.model, "--quant-config", d / "q.json", "-o", d / "run"]


@case("--max-drop")
def export_max_drop_over_100(world, d):
    return ["export", world.model, "--int8", "--calib-table", world.table, "--max-drop", "150",
            "-o", d / "run"]  # fmt: skip


@case("--fused")
def eval_an_artifact_with_fused(world, d):
    return ["eval", world.onnx, "--data", world.images, "--fused"]


@case("--seed")
def eval_an_artifact_with_a_seed(world, d):
    return ["eval", world.onnx, "--data", world.images, "--seed", "3"]


@case("names a folder")
def calibrate_out_with_a_trailing_slash(world, d):
    return ["calibrate", world.model, "--data", world.images, "--calib-size", "2",
            "-o", f"{d / 'newdir'}/"]  # fmt: skip


@case("listed again")
def eval_labels_listing_a_file_twice(world, d):
    names = sorted(p.name for p in world.flat.iterdir())
    (d / "labels.txt").write_text(f"{names[0]} n01440764\n{names[0]} n01443537\n")
    return ["eval", world.onnx, "--data", world.flat, "--labels", d / "labels.txt"]


@case("check")
def device_results_check_a_string(world, d):
    return _device(world, d, row_check="passed")


@case("same run directory")
def config_two_identical_exports(world, d):
    return _config(world, d, '[[export]]\ntarget = "onnx"\n')


@case("non-empty")
def config_out_empty(world, d):
    (d / "run.toml").write_text(f'out = ""\n[model]\nname = "{world.model}"\n[[export]]\n')
    return ["run", d / "run.toml"]


@case("empty graph")
def check_an_empty_graph(world, d):
    import onnx
    from onnx import helper

    onnx.save(helper.make_model(helper.make_graph([], "g", [], [])), str(d / "m.onnx"))
    return ["check", d / "m.onnx"]


@case("manifest.json")
def bundle_a_run_with_a_corrupt_manifest(world, d):
    run = copy_into(world.run, d)
    (run / "manifest.json").write_text("{ not json")
    return ["bundle", run, "--device", "x86-host", "--samples", "1", "--data", world.images,
            "-o", d / "bundle"]  # fmt: skip



@case("far wider than")
def table_range_far_wider_than_observed(world, d):
    def edit(t):
        t["activations"]["conv2:in0"].update(min=-1e30, max=1e30)

    return ["export", world.model, "--int8", "--calib-table", edited_table(world, d, edit),
            "-o", d / "run"]  # fmt: skip


@case("output channels")
def table_weight_amax_of_the_wrong_length(world, d):
    def edit(t):
        t["weight_amax"]["conv"] = t["weight_amax"]["conv"][:3]

    return ["export", world.model, "--int8", "--calib-table", edited_table(world, d, edit),
            "-o", d / "run"]  # fmt: skip


@case("far from the weights")
def table_weight_amax_finite_but_extreme(world, d):
    def edit(t):
        t["weight_amax"]["conv"] = [v * 1e6 for v in t["weight_amax"]["conv"]]

    return ["export", world.model, "--int8", "--calib-table", edited_table(world, d, edit),
            "-o", d / "run"]  # fmt: skip


# --- run directories whose records and files disagree
def _manifest(world, d, edit: Callable[[dict], None]) -> Path:
    run = copy_into(world.run, d)
    data = json.loads((run / "manifest.json").read_text())
    edit(data)
    (run / "manifest.json").write_text(json.dumps(data))
    return run


@case("damaged")
def report_a_manifest_whose_records_are_a_string(world, d):
    run = _manifest(world, d, lambda m: m["stages"]["export"]["results"].update(artifacts="x"))
    return ["report", run, "-o", d / "report"]


@case("damaged")
def report_a_manifest_whose_file_records_are_a_list(world, d):
    run = _manifest(world, d, lambda m: m["stages"]["export"].update(artifacts=[1]))
    return ["report", run, "-o", d / "report"]


@case("gone")
def report_a_run_whose_recorded_artifact_was_deleted(world, d):
    run = copy_into(world.run, d)
    (run / "model.onnx").unlink()
    return ["report", run, "-o", d / "report"]


@case("gone")
def bundle_a_run_whose_recorded_artifact_was_deleted(world, d):
    run = copy_into(world.run, d)
    (run / "model.onnx").unlink()
    return ["bundle", run, "--device", "x86-host", "--samples", "1", "--data", world.images,
            "-o", d / "bundle"]  # fmt: skip


@case("finished")
def device_results_finished_a_number(world, d):
    return _device(world, d, finished=5)


# Checks that need the fused model itself (its weights) run after fusing.
FOUND_AFTER_FUSING = {"table-weight-amax-of-the-wrong-length",
                      "table-weight-amax-finite-but-extreme"}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_fresh_bad_input(name, world, expect_error) -> None:
    make, keyword = CASES[name]
    d = world.path("fresh-" + name)
    d.mkdir()
    argv = make(world, d)
    before = sorted(p.relative_to(d) for p in d.rglob("*"))
    line = expect_error(argv, keyword, folder=d)
    assert "error: edgevt: error" not in line
    if name in FOUND_AFTER_FUSING:  # whole files of the fuse stage, no artifact
        assert not list(d.rglob("*.onnx")), "an artifact was written"
    else:
        assert sorted(p.relative_to(d) for p in d.rglob("*")) == before, "refused, yet changed"


def test_a_tflite_int8_its_runtime_cannot_run_is_removed(world, tmp_path, capsys) -> None:
    """A finite but absurd range (1e38) makes XNNPACK refuse the file: an error, not a crash,
    and the unusable file is gone."""
    pytest.importorskip("ai_edge_quantizer", reason="pip install edgevt[tflite]")
    from tests.reliability.conftest import assert_clean_error, cli

    data = json.loads(world.table.read_text())
    data["activations"]["conv2:in0"].update(min=-1e38, max=1e38, observed_min=-1e38,
                                             observed_max=1e38)  # fmt: skip
    (tmp_path / "t.json").write_text(json.dumps(data))
    run = tmp_path / "run"
    code, err = cli(["export", world.model, "--target", "tflite", "--int8", "--calib-table",
                     tmp_path / "t.json", "-o", run], capsys)  # fmt: skip
    assert_clean_error(code, err, "not kept", run)
    assert not (run / "model_int8.tflite").exists()


def test_qat_that_diverges_saves_nothing(world, tmp_path, capsys, monkeypatch) -> None:
    """Finite settings can still diverge: NaN weights are refused, not written as fused.pt."""
    import torch

    from edgevt.quant import qat as qat_module
    from tests.reliability.conftest import assert_clean_error, cli

    real = qat_module.train

    def poisoned(sim, *args, **kwargs):
        state = real(sim, *args, **kwargs)
        with torch.no_grad():
            for p in sim.parameters():
                p.fill_(float("nan"))
        return state

    monkeypatch.setattr(qat_module, "train", poisoned)
    run = tmp_path / "run"
    code, err = cli(["qat", world.model, "--data", world.images, "--calib-table", world.table,
                     "--steps", "1", "--batch", "2", "--device", "cpu", "-o", run], capsys)
    assert_clean_error(code, err, "diverged", run)
    assert not (run / "fused.pt").exists() and not (run / "qat_checkpoint.pt").exists()


def test_device_results_given_twice_count_once(world, tmp_path) -> None:
    from edgevt.report import collect

    (tmp_path / "device.json").write_text(json.dumps(GOOD_DEVICE))
    path = tmp_path / "device.json"
    once = collect([world.run], [path])
    twice = collect([world.run], [path, tmp_path / "." / "device.json"])
    assert len(twice.timings) == len(once.timings)


def test_qat_with_an_absurd_finite_rate_saves_nothing(world, tmp_path, capsys) -> None:
    """--lr 1e30 keeps the weights finite but turns them into garbage: refused as diverged,
    not saved for the next export's guard to find."""
    from tests.reliability.conftest import assert_clean_error, cli

    run = tmp_path / "run"
    code, err = cli(["qat", world.model, "--data", world.images, "--calib-table", world.table,
                     "--steps", "1", "--batch", "2", "--device", "cpu", "--lr", "1e30",
                     "-o", run], capsys)  # fmt: skip
    assert_clean_error(code, err, "diverged", run)
    assert not (run / "fused.pt").exists()


def test_calibrating_on_fewer_images_than_asked_says_so(world, tmp_path, capsys) -> None:
    from tests.reliability.conftest import cli

    code, err = cli(["calibrate", world.model, "--data", world.images, "--calib-size", "1000",
                     "-o", tmp_path / "t.json"], capsys)  # fmt: skip
    n = len([p for p in world.images.rglob("*") if p.is_file()])
    assert code == 0, err
    assert f"calibrating on the {n} images" in err
    assert json.loads((tmp_path / "t.json").read_text())["source"]["images"] == n
