"""The target contract, tested over the registry: every registered target exports a tiny model in
each precision it offers, its runner reproduces the reference, its files carry their info, and a
missing runtime is one clear line. A target defined here, TorchScript, registers itself and
flows through export, eval, bench, bundle and report without an edit to any edgevt module."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import edgevt
from edgevt import api
from edgevt.artifact import METADATA_KEY, ArtifactInfo
from edgevt.errors import BackendMissingError, EdgevtError
from edgevt.targets import all_targets, read_artifact_info, register_target
from edgevt.targets.base import (
    Artifact,
    ExportContext,
    Runner,
    Target,
    TargetOptions,
    TargetSpec,
)
from tests.helpers import tiny_model

TINY = tiny_model()
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit's deprecation
THIS = "tests.targets.test_contract"  # imported by subprocesses through $EDGEVT_TARGET_MODULES



# -------------------------------------------------------------- a target defined in a test


class TorchScriptRunner(Runner):
    def __init__(self, path: Path, threads: int | None = None) -> None:
        super().__init__()
        self.path, self.threads = Path(path), threads
        self.info = read_torchscript_info(self.path)
        self.module = None

    def _activate(self) -> None:
        self.module = torch.jit.load(str(self.path))

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.module(torch.from_numpy(batch)).numpy()

    def describe(self) -> dict:
        return {"backend": "torchscript", "artifact": str(self.path), "model": self.info.model,
                "precision": self.info.precision, "threads": self.threads or 1}  # fmt: skip


def read_torchscript_info(path: Path) -> ArtifactInfo | None:
    files = {METADATA_KEY: ""}
    torch.jit.load(str(path), _extra_files=files)
    return ArtifactInfo.from_json(files[METADATA_KEY]) if files[METADATA_KEY] else None


@dataclass(frozen=True)
class TorchScriptOptions(TargetOptions):
    check_trace: bool = True


@register_target
class TorchScriptTarget(Target):
    spec = TargetSpec(name="torchscript", description="TorchScript (test plug-in)",
                      suffixes=(".ts",), precisions=("fp32",), device_runtime="torch")  # fmt: skip
    Options = TorchScriptOptions

    def export(self, ctx: ExportContext, options: TorchScriptOptions) -> list[Artifact]:
        path = ctx.path(self.spec, "fp32")
        traced = torch.jit.trace(ctx.model.eval(), ctx.images[:1], check_trace=options.check_trace)
        torch.jit.save(traced, str(path), _extra_files={METADATA_KEY: ctx.info.to_json()})
        return [Artifact(path, "fp32")]

    def runner(self, path: Path, threads: int | None = None) -> Runner:
        return TorchScriptRunner(path, threads)

    def read_info(self, path: Path) -> ArtifactInfo | None:
        return read_torchscript_info(path)


# ---------------------------------------------------------------- every registered target


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory, calib_dir: Path) -> Path:
    path = tmp_path_factory.mktemp("calib") / "tiny.json"
    api.calibrate(TINY, data=calib_dir, calib_size=8, out=path, progress=False)
    return path


@pytest.mark.parametrize("name", [n for n in all_targets() if n != "torchscript"])
def test_every_target_exports_checks_and_describes_itself(
    name: str, tmp_path: Path, tiny_table: Path, calib_dir: Path
) -> None:
    target = all_targets()[name]
    if target.available() is not None:
        pytest.skip(target.available())
    int8 = target.spec.int8_precision in target.spec.precisions
    out = api.export(
        TINY, name, out=tmp_path / name, precisions=list(target.spec.precisions[1:]),
        calib_table=tiny_table if int8 else None, calib=calib_dir if int8 else None,
        progress=False,
    )  # fmt: skip
    assert [a.precision for a in out.artifacts] == list(target.spec.precisions)
    assert out.check["cosine"] > 0.9999  # fp32 reproduces the fused model
    images = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    for artifact in out.artifacts:
        info = read_artifact_info(artifact.path)
        assert (info.model, info.target, info.precision) == (TINY, name, artifact.precision)
        assert np.isfinite(artifact.check["cosine"]) and artifact.check["cosine"] > 0.9
        with edgevt.open_runner(artifact.path) as runner:  # the registry finds the runner
            assert runner.infer(images).shape == (2, 1000)
            described = runner.describe()  # what eval, bench and the report print and read
        assert {"backend", "artifact", "model", "precision", "threads"} <= set(described)
        assert (described["model"], described["precision"]) == (TINY, artifact.precision)
    records = json.loads((out.run_dir / "manifest.json").read_text())["stages"]["export"]
    recorded = records["results"]["artifacts"]
    assert [(r["target"], r["precision"]) for r in recorded] == [
        (name, p) for p in target.spec.precisions
    ]
    if int8:
        assert out.int8.quantization.quantized_ops > 0


@pytest.mark.parametrize("name", [n for n, t in all_targets().items() if t.requires])
def test_a_missing_runtime_is_one_clear_line(name: str, monkeypatch, tmp_path: Path) -> None:
    target = all_targets()[name]
    monkeypatch.setattr(type(target), "requires", ("no_such_runtime_module",))
    assert "pip install 'edgevt[" in target.available()
    with pytest.raises(BackendMissingError, match=f"the {name} target needs no_such_runtime"):
        api.export(TINY, name, out=tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()  # refused before any work


def test_options_are_typed_and_unknown_ones_refused(tmp_path: Path) -> None:
    with pytest.raises(EdgevtError, match="--float-ops does not apply to --target onnx"):
        api.export(TINY, "onnx", float_ops=["SOFTMAX"], out=tmp_path / "x", progress=False)
    with pytest.raises(EdgevtError, match="--opset takes an integer"):
        api.export(TINY, "onnx", opset="17", out=tmp_path / "x", progress=False)
    with pytest.raises(EdgevtError, match="--max-drop is not yet honoured by the torchscript"):
        api.export(TINY, "torchscript", int8=False, max_drop=0.5, out=tmp_path / "x")
    options = all_targets()["tflite"].options({"float_ops": ["SOFTMAX"], "int8_io": None})
    assert dataclasses.asdict(options) == {"int8_io": False, "float_ops": ("SOFTMAX",),
                                           "optimize": None, "profile_on": None}  # fmt: skip


# ------------------------------------------------- the test target through the whole product


def test_a_new_target_flows_through_export_eval_bench_bundle_report(
    tmp_path: Path, val_dir: Path, monkeypatch
) -> None:
    monkeypatch.setenv("EDGEVT_TARGET_MODULES", THIS)  # bench times in its own process
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    run = tmp_path / "run"
    out = api.export(TINY, "torchscript", out=run, eval_data=val_dir, limit=8, check_trace=False,
                     progress=False)  # fmt: skip
    assert out.artifact == run / "model.ts" and out.check["cosine"] > 0.9999
    assert out.evals["model.ts"]["n"] == 8

    result = edgevt.evaluate(out.artifact, val_dir, limit=8, progress=False)
    assert result.runner["backend"] == "torchscript" and result.n == 8

    (timing, _), = api.bench([out.artifact], seconds=0.05, iterations=2, warmup=1)
    assert timing.runner["backend"] == "torchscript" and timing.p50_ms > 0

    profile = tmp_path / "ts-device.toml"
    profile.write_text('name = "ts-device"\ndescription = "a TorchScript device"\nos = "linux"\n'
                       'arch = "x86_64"\ntargets = ["torchscript"]\nprecisions = ["fp32"]\n'
                       'threads = [1]\nconnect = "local"\n')  # fmt: skip
    from edgevt.bundle import make_bundle

    bundle = make_bundle(run, profile, tmp_path / "bundle", samples=2, data=val_dir)
    assert bundle.models == ["model.ts"]
    meta = json.loads((bundle.path / "bundle.json").read_text())
    assert meta["models"]["model.ts"]["target"] == "torchscript"
    assert "they need numpy and torch." in (bundle.path / "README.md").read_text()

    from edgevt.report import collect, write_report

    report = collect([run])
    rows = {r.artifact: r for r in report.rows}
    assert (rows["model.ts"].target, rows["model.ts"].precision) == ("torchscript", "fp32")
    assert [t.target for t in report.timings] == ["torchscript"]
    paths = write_report(report, tmp_path / "report", "contract")
    assert "model.ts" in paths["markdown"].read_text()


def test_the_cli_lists_a_plugin_target_and_takes_its_options(tmp_path: Path) -> None:
    env = {**__import__("os").environ, "EDGEVT_TARGET_MODULES": THIS}
    root = str(Path(__file__).resolve().parents[2])
    listed = subprocess.run([sys.executable, "-m", "edgevt.cli", "targets", "--json"], env=env,
                            capture_output=True, text=True, cwd=root, timeout=120)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    names = [t["name"] for t in json.loads(listed.stdout)]
    assert names[:4] == ["onnx", "tensorrt", "tflite", "coreml"] and "torchscript" in names
