"""A table that passes every load check can still describe another model's ranges: the export
must not ship the int8 file it gives (NaN logits or a cosine far from fp32) as a success."""

from __future__ import annotations

import json

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
    assert not (run / "model_int8.onnx").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert "export" not in manifest["stages"], "a refused export was recorded as done"


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
    assert not (run / "model_int8.onnx").exists() and (run / "calibration.json").is_file()
