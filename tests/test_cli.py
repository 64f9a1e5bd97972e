"""The command line as a user meets it: fast help, JSON output, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import edgevt
from edgevt import api

EDGEVT = [sys.executable, "-m", "edgevt.cli"]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*EDGEVT, *args], capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_help_needs_no_heavy_imports() -> None:
    code = (
        "import sys, edgevt.cli as c; c.build_parser().format_help(); "
        "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'timm', 'transformers') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    help_text = run("--help").stdout
    for command in ("models", "fuse", "export", "eval"):
        assert command in help_text
    assert "--checkpoint" in run("export", "--help").stdout


def test_models_lists_the_zoo() -> None:
    names = {row["name"] for row in json.loads(run("models", "--json").stdout.splitlines()[-1])}
    assert {"levit_128s", "levit_384", "cvt_13", "cvt_w24", "efficientnet_lite0"} <= names


def test_export_then_eval_an_artifact_with_no_further_flags(tmp_path: Path, val_dir) -> None:
    out = tmp_path / "run"
    proc = run("export", "levit_128s", "--target", "onnx", "-o", str(out), "--json")
    assert "random init" in proc.stderr or "random init" in proc.stdout
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["fuse"]["batchnorm_after"] == 0
    assert (out / "model.onnx").is_file() and (out / "manifest.json").is_file()
    # No stray temporary files from the atomic writes (the run's lock file stays).
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".edgevt.lock"]

    proc = run("eval", str(out / "model.onnx"), "--data", str(val_dir), "--limit", "16", "--json")
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["n"] == 16 and 0.0 <= last["top1"] <= 100.0 and "top5" in last


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: edgevt.evaluate("levit_128s", "/nonexistent/dir"), "does not exist"),
        (lambda: edgevt.evaluate("missing.onnx", "."), "does not exist"),
        (lambda: edgevt.export("levit_999"), "unknown model"),
        (lambda: edgevt.export("levit_128s", int8_io=True), "--int8-io does not apply"),
        (lambda: edgevt.export("levit_128s", opset=99), "--opset 99"),
        (lambda: edgevt.export("levit_128s", "vulkan"), "unknown target 'vulkan'"),
        (lambda: api.fuse("levit_128s", "/nonexistent.pth"), "does not exist"),
        (lambda: edgevt.open_runner("model.onnx", threads=0), "--threads 0"),
    ],
)
def test_bad_input_is_an_edgevt_error(call, message) -> None:
    with pytest.raises(edgevt.EdgevtError, match=message):
        call()


@pytest.mark.parametrize(
    "args,message",
    [
        (["eval", "missing.onnx", "--data", "."], "does not exist"),  # raised by the API
        (["export", "levit_128s", "--target", "vulkan"], "invalid choice: 'vulkan'"),  # argparse
        (["export"], "the following arguments are required: model"),
    ],
)
def test_errors_are_one_line_without_traceback(args, message) -> None:
    proc = run(*args, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("edgevt: error: ") and len(proc.stderr.splitlines()) == 1
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_truncated_onnx_file_is_named_corrupt(tmp_path: Path) -> None:
    from tests.helpers import tiny_model

    whole = api.export(tiny_model(), out=tmp_path / "run", progress=False).artifact
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    with pytest.raises(edgevt.EdgevtError, match="cut.onnx is not a readable ONNX model"):
        edgevt.evaluate(cut, ".")


def test_a_plugin_that_does_not_import_is_one_line() -> None:
    import os

    env = {**os.environ, "EDGEVT_TARGET_MODULES": "no_such_edgevt_plugin"}
    proc = subprocess.run([*EDGEVT, "targets"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("edgevt: error: cannot import the target plug-in")


def test_corrupt_checkpoint_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    torch.save({"w": torch.zeros(10)}, bad)
    bad.write_bytes(bad.read_bytes()[:50])
    with pytest.raises(edgevt.EdgevtError, match="truncated"):
        api.fuse("levit_128s", bad)


def test_readme_targets_table_is_generated_from_the_registry() -> None:
    """The README's table is `edgevt targets --markdown`: a new target must regenerate it."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    found = re.search(r"<!-- targets:begin[^\n]*-->\n(.*?)<!-- targets:end -->", readme, re.S)
    assert found, "README.md lost its targets markers"
    table = run("targets", "--markdown").stdout
    assert found.group(1) == table, "regenerate: edgevt targets --markdown, into README.md"


def test_calibrate_writes_a_table_and_says_what_it_measured(tmp_path: Path, calib_dir) -> None:
    out = tmp_path / "levit.json"
    proc = run("calibrate", "levit_128s", "--data", str(calib_dir), "--calib-size", "4",
               "-o", str(out), "--json")  # fmt: skip
    assert "calibrated levit_128s (percentile) on 4 images" in proc.stdout
    assert json.loads(proc.stdout.splitlines()[-1])["table"] == str(out) and out.is_file()
