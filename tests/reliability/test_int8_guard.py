"""A table that passes every load check can still describe another model's ranges: the export
must not ship the int8 file it gives (NaN logits or a cosine far from fp32) as a success."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reliability.conftest import assert_clean_error, cli


def _shrunk_table(world, d, factor: float):
    """Every activation range (and what was observed) scaled: valid, finite, ordered, wrong."""
    data = json.loads(world.table.read_text())
    for r in data["activations"].values():
        for k in ("min", "max", "observed_min", "observed_max"):
            r[k] = r[k] * factor
    path = d / "table.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("target", ["onnx", "tensorrt"])
@pytest.mark.parametrize("factor", [1e-3, 1e3])
def test_a_grossly_wrong_int8_model_is_an_error_and_removed(target, factor, world, tmp_path,
                                                            capsys):  # fmt: skip
    run = tmp_path / "run"
    argv = ["export", world.model, "--target", target, "--int8", "--calib-table",
            _shrunk_table(world, tmp_path, factor), "-o", run]  # fmt: skip
    code, err = cli(argv, capsys)
    line = assert_clean_error(code, err, "departs grossly", run)
    assert "--accept-degraded" in line and "recalibrate" in line
    assert not run.exists(), "a refused export leaves no run folder it made"


def test_a_refused_export_leaves_an_existing_run_as_it_was(world, tmp_path, capsys) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(world.run, run)
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    argv = ["export", world.model, "--int8", "--calib-table",
            _shrunk_table(world, tmp_path, 1e-3), "-o", run]  # fmt: skip
    code, err = cli(argv, capsys)
    assert_clean_error(code, err, "departs grossly", run)
    added = [p.relative_to(run) for p in run.rglob("*") if p.is_file()
             and p.relative_to(run) not in before and p.name != ".edgevt.lock"]  # fmt: skip
    assert not added, f"files the refused export added are left: {added}"
    manifest = json.loads((run / "manifest.json").read_text())
    assert "export" in manifest["stages"]  # the earlier fp32 export's record, restored
    assert (run / "manifest.json").read_bytes() == before[Path("manifest.json")]
    assert not (run / "model_int8.onnx").exists()


def test_accept_degraded_keeps_it_and_records_the_cosine(world, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["export", world.model, "--int8", "--calib-table", _shrunk_table(world, tmp_path, 1e-3),
            "--accept-degraded", "-o", run, "--json"]  # fmt: skip
    code, err = cli(argv, capsys)
    assert code == 0, err
    record = json.loads((run / "manifest.json").read_text())["stages"]["export"]
    cosines = {a["file"]: a["check"]["cosine"] for a in record["results"]["artifacts"]}
    assert cosines["model_int8.onnx"] < 0.9 and (run / "model_int8.onnx").is_file()


def test_the_guard_passes_a_good_table(world, tmp_path, capsys):
    """The floor sits far below honest int8 noise: the world's own table exports."""
    code, err = cli(["export", world.model, "--int8", "--calib-table", world.table,
                     "-o", tmp_path / "run"], capsys)  # fmt: skip
    assert code == 0, err


def test_a_file_its_runtime_refuses_is_removed_whatever_the_error(world, tmp_path, capsys,
                                                                  monkeypatch):  # fmt: skip
    """A runner that says, in its own words, that it cannot load the file (OpenVINO's and
    Core ML's loaders raise EdgevtError): the message stays theirs, the file still goes."""
    from edgevt.errors import EdgevtError
    from edgevt.targets.onnx import OnnxTarget

    real = OnnxTarget.check

    def refuses_int8(self, artifact, images, reference):
        if artifact.precision == "int8":
            raise EdgevtError(f"the runtime cannot load {artifact.path.name}")
        return real(self, artifact, images, reference)

    monkeypatch.setattr(OnnxTarget, "check", refuses_int8)
    run = tmp_path / "run"
    code, err = cli(["export", world.model, "--int8", "--calib-table", world.table, "-o", run],
                    capsys)  # fmt: skip
    assert_clean_error(code, err, "cannot load model_int8.onnx", run)
    assert not run.exists(), "a refused export leaves no run folder it made"
    assert world.table.is_file()  # the user's own table is never touched
