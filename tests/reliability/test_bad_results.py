"""What `edgevt report` and `edgevt bundle` read: run directories, manifests, benchmark and
device results, device profiles, and artifacts that break halfway through a bundle."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability.conftest import case_table

GOOD_RESULT = {
    "format": "edgevt.device-results/1",
    "device": "raspberry-pi-5",
    "host": {"hostname": "pi", "machine": "aarch64", "platform": "Linux", "python": "3.11",
             "cpus": 4},
    "finished": "2026-12-04T19:51:22+00:00",
    "results": [{"artifact": "model.onnx", "model": "tiny_cnn", "precision": "fp32",
                 "backend": "onnxruntime", "threads": 2, "batch": 1, "p50_ms": 1.0,
                 "p90_ms": 1.2, "check": {"passed": True}}],
}  # fmt: skip

CASES, case = case_table()


@pytest.fixture(scope="module")
def timed_run(world, tmp_path_factory) -> Path:
    """A copy of the world's run with a host benchmark: something `edgevt report` can show."""
    from edgevt import api

    run = tmp_path_factory.mktemp("timed") / "run"
    shutil.copytree(world.run, run)
    api.bench([run / "model.onnx"], threads=[1], seconds=0.01, iterations=1, warmup=0)
    return run


def _run_copy(timed_run: Path, d: Path, edit: Callable[[Path], None] | None = None) -> Path:
    run = d / "run"
    shutil.copytree(timed_run, run)
    if edit is not None:
        edit(run)
    return run


def _report(run: Path, d: Path, *extra) -> list:
    return ["report", run, "-o", d / "report", *extra]


def _results(d: Path, data) -> Path:
    path = d / "device.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _result_with(**changes) -> dict:
    data = json.loads(json.dumps(GOOD_RESULT))
    for key, value in changes.items():
        if key.startswith("row_"):
            row = data["results"][0]
            if value is None:
                row.pop(key[4:])
            else:
                row[key[4:]] = value
        elif value is None:
            data.pop(key)
        else:
            data[key] = value
    return data


# --- edgevt report: run directories and manifests
@case("does not exist")
def report_run_missing(world, run, d):
    return _report(d / "nowhere", d)


@case("no manifest")
def report_folder_without_manifest(world, run, d):
    (d / "empty").mkdir()
    return _report(d / "empty", d)


@case("manifest")
def report_manifest_not_json(world, run, d):
    return _report(_run_copy(run, d, lambda r: (r / "manifest.json").write_text("{ nope")), d)


@case("manifest")
def report_manifest_binary(world, run, d):
    return _report(_run_copy(run, d, lambda r: (r / "manifest.json").write_bytes(b"\xff\x00")), d)


@case("not a JSON object")
def report_manifest_an_array(world, run, d):
    return _report(_run_copy(run, d, lambda r: (r / "manifest.json").write_text("[]")), d)


@case("no stages")
def report_manifest_without_stages(world, run, d):
    return _report(_run_copy(run, d, lambda r: (r / "manifest.json").write_text("{}")), d)


@case("no stages")
def report_manifest_stages_a_list(world, run, d):
    return _report(
        _run_copy(run, d, lambda r: (r / "manifest.json").write_text('{"stages": [1]}')), d
    )


@case("stage")
def report_manifest_stage_a_string(world, run, d):
    return _report(_run_copy(
        run, d, lambda r: (r / "manifest.json").write_text('{"stages": {"export": "done"}}')
    ), d)  # fmt: skip


@case("corrupt")
def report_run_with_a_truncated_artifact(world, run, d):
    def cut(r):
        data = (r / "model.onnx").read_bytes()
        (r / "model.onnx").write_bytes(data[: len(data) // 2])

    return _report(_run_copy(run, d, cut), d)


def _bench_file(r: Path) -> Path:
    return next((r / "bench").glob("*.json"))


@case("benchmark result")
def report_bench_result_not_json(world, run, d):
    return _report(_run_copy(run, d, lambda r: _bench_file(r).write_text("{")), d)


@case("p50_ms")
def report_bench_result_missing_keys(world, run, d):
    def edit(r):
        data = json.loads(_bench_file(r).read_text())
        data.pop("p50_ms")
        _bench_file(r).write_text(json.dumps(data))

    return _report(_run_copy(run, d, edit), d)


@case("benchmark result")
def report_bench_result_wrong_value(world, run, d):
    def edit(r):
        data = json.loads(_bench_file(r).read_text())
        data["p50_ms"] = "fast"
        _bench_file(r).write_text(json.dumps(data))

    return _report(_run_copy(run, d, edit), d)


@case("not a JSON object")
def report_bench_result_an_array(world, run, d):
    return _report(_run_copy(run, d, lambda r: _bench_file(r).write_text("[1]")), d)


# --- edgevt report --device-results
@case("does not exist")
def device_results_missing(world, run, d):
    return _report(run, d, "--device-results", d / "none.json")


@case("device results")
def device_results_not_json(world, run, d):
    return _report(run, d, "--device-results", _results(d, "{ nope"))


@case("not a JSON object")
def device_results_an_array(world, run, d):
    return _report(run, d, "--device-results", _results(d, "[]"))


@case("run_bundle.py")
def device_results_other_format(world, run, d):
    return _report(run, d, "--device-results", _results(d, _result_with(format="x/2")))


@case("results")
def device_results_without_results(world, run, d):
    return _report(run, d, "--device-results", _results(d, _result_with(results=None)))


@case("results")
def device_results_results_a_dict(world, run, d):
    return _report(run, d, "--device-results", _results(d, _result_with(results={"a": 1})))


@case("device")
def device_results_without_device(world, run, d):
    return _report(run, d, "--device-results", _results(d, _result_with(device=None)))


@case("threads")
def device_results_threads_not_an_integer(world, run, d):
    return _report(run, d, "--device-results", _results(d, _result_with(row_threads="two")))


@case("artifact")
def device_results_row_without_artifact(world, run, d):
    return _report(run, d, "--device-results", _results(d, _result_with(row_artifact=None)))


@case("p90_ms")
def device_results_row_without_p90(world, run, d):
    return _report(run, d, "--device-results", _results(d, _result_with(row_p90_ms=None)))


@case("precision")
def device_results_row_without_precision(world, run, d):
    return _report(run, d, "--device-results", _results(d, _result_with(row_precision=None)))


@case("folder")
def device_results_a_folder(world, run, d):
    (d / "results").mkdir()
    return _report(run, d, "--device-results", d / "results")


# --- edgevt bundle
def _bundle(run: Path, d: Path, *extra, device: str = "x86-host") -> list:
    return ["bundle", run, "--device", device, "--samples", "1", "-o", d / "bundle", *extra]


@case("does not exist")
def bundle_run_missing(world, run, d):
    return _bundle(d / "nowhere", d)


@case("no artifact")
def bundle_run_without_artifacts(world, run, d):
    (d / "empty").mkdir()
    return _bundle(d / "empty", d)


@case("no artifact")
def bundle_run_of_another_target(world, run, d):
    return _bundle(run, d, device="iphone-15")


@case("corrupt")
def bundle_second_artifact_corrupt(world, run, d):
    def add(r):
        (r / "model_int8.onnx").write_bytes(b"\x08\x01" + b"\xff" * 64)

    return _bundle(_run_copy(run, d, add), d, "--data", world.images)


@case("corrupt")
def bundle_first_artifact_truncated(world, run, d):
    def cut(r):
        data = (r / "model.onnx").read_bytes()
        (r / "model.onnx").write_bytes(data[: len(data) // 2])

    return _bundle(_run_copy(run, d, cut), d, "--data", world.images)


@case("--force")
def bundle_into_a_non_empty_folder(world, run, d):
    (d / "bundle").mkdir()
    (d / "bundle" / "mine.txt").write_text("x")
    return _bundle(run, d, "--data", world.images)


@case("no images")
def bundle_data_without_images(world, run, d):
    (d / "empty").mkdir()
    return _bundle(run, d, "--data", d / "empty")


@case("does not exist")
def bundle_data_missing(world, run, d):
    return _bundle(run, d, "--data", d / "nowhere")


@case("does not exist")
def bundle_profile_path_missing(world, run, d):
    return _bundle(run, d, device=str(d / "mine.toml"))


@case("not valid TOML")
def bundle_profile_not_toml(world, run, d):
    (d / "mine.toml").write_text("name = [")
    return _bundle(run, d, device=str(d / "mine.toml"))


@case("missing")
def bundle_profile_missing_keys(world, run, d):
    (d / "mine.toml").write_text('name = "mine"\n')
    return _bundle(run, d, device=str(d / "mine.toml"))


@case("vulkan")
def bundle_profile_unknown_target(world, run, d):
    text = (Path(__file__).parents[2] / "targets" / "x86-host.toml").read_text()
    (d / "mine.toml").write_text(text.replace('"onnx"', '"vulkan"', 1))
    return _bundle(run, d, device=str(d / "mine.toml"))


@case("targets")
def bundle_profile_old_keys(world, run, d):
    text = (Path(__file__).parents[2] / "targets" / "x86-host.toml").read_text()
    (d / "mine.toml").write_text(text + '\nbackend = "onnxruntime"\n')
    return _bundle(run, d, device=str(d / "mine.toml"))


@case("folder")
def eval_a_run_directory(world, run, d):
    return ["eval", run, "--data", world.images]


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_result_or_bundle_input(name, world, timed_run, expect_error) -> None:
    make, keyword = CASES[name]
    d = world.path("results-" + name)
    d.mkdir()
    expect_error(make(world, timed_run, d), keyword, folder=d)
    assert not (d / "report").exists() and not (d / "bundle" / "bundle.json").exists()
