"""Host latency benchmark behind the one runner interface (after trtexec / benchmark_model).

Warm up, then time single ``infer`` calls until a time budget or an iteration count is spent;
report p50/p90/p99, mean, throughput, the peak resident memory the model added, and the
artifact size. The same runners as ``edgevt eval``, so a benchmark times what was validated.
``bundle_runner.py`` keeps its own copy of the timing loop on purpose: it runs on devices
without edgevt installed.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgevt.io import artifact_size
from edgevt.targets.base import Runner


@dataclass
class BenchResult:
    runner: dict[str, Any]  # what ran: backend, artifact, precision, threads
    batch: int
    iterations: int
    warmup: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    throughput_ips: float  # images per second at this batch size (from the mean)
    peak_memory_mb: float | None  # resident memory added by loading and running the model
    size_bytes: int | None
    host: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def result_name(artifact: Path, threads: int, batch: int) -> str:
    """File name of one benchmark result (``bench/<name>`` in the artifact's run directory)."""
    return f"{artifact.stem}-t{threads}-b{batch}.json"


def benchmark(
    runner: Runner,
    batch: int = 1,
    warmup: int = 10,
    min_seconds: float = 3.0,
    min_iterations: int = 20,
    max_iterations: int = 10_000,
    inputs: np.ndarray | None = None,
) -> BenchResult:
    """Time ``runner.infer`` on a ``batch``-image input.

    Runs at least ``min_iterations`` and until ``min_seconds`` have passed, at most
    ``max_iterations``. ``inputs`` defaults to a fixed random image batch: latency of these
    models does not depend on pixel values.
    """
    if batch < 1:
        raise ValueError("batch must be >= 1")
    size = runner.info.preprocess.input_size
    if inputs is None:
        inputs = np.random.default_rng(0).standard_normal((batch, 3, size, size), np.float32)
    baseline = _reset_peak_rss()
    runner.activate()
    for _ in range(warmup):
        runner.infer(inputs)
    times = []
    start = time.perf_counter()
    while len(times) < max_iterations and (
        len(times) < min_iterations or time.perf_counter() - start < min_seconds
    ):
        t0 = time.perf_counter()
        runner.infer(inputs)
        times.append((time.perf_counter() - t0) * 1e3)
    peak = _peak_rss()
    ms = np.asarray(times)
    described = runner.describe()
    mean = float(ms.mean())
    return BenchResult(
        runner=described,
        batch=batch,
        iterations=len(times),
        warmup=warmup,
        p50_ms=float(np.percentile(ms, 50)),
        p90_ms=float(np.percentile(ms, 90)),
        p99_ms=float(np.percentile(ms, 99)),
        mean_ms=mean,
        min_ms=float(ms.min()),
        throughput_ips=batch * 1e3 / mean,
        peak_memory_mb=None if baseline is None or peak is None else (peak - baseline) / 2**20,
        size_bytes=described.get("size_bytes") or _size(described.get("artifact")),
        host=host_info(),
    )


def host_info() -> dict[str, Any]:
    import platform

    return {
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def _size(artifact: str | None) -> int | None:
    if not artifact or not Path(artifact).exists():
        return None
    return artifact_size(artifact)


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> int | None:
    """Current resident bytes, after resetting the kernel's peak (VmHWM) to it (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    rss = _status_kb("VmRSS")
    return None if rss is None else rss * 1024


def _peak_rss() -> int | None:
    hwm = _status_kb("VmHWM")
    return None if hwm is None else hwm * 1024


def benchmark_isolated(
    artifact: Path, threads: int, batch: int, warmup: int, seconds: float, iterations: int
) -> BenchResult:
    """``benchmark`` of ``artifact`` in a fresh Python process, so that every measurement starts
    from the same memory baseline and no earlier session's threads or caches interfere."""
    import json
    import subprocess
    import sys

    from edgevt.errors import EdgevtError

    cmd = [sys.executable, "-m", "edgevt.bench", str(artifact), str(threads), str(batch)]
    cmd += [str(warmup), str(seconds), str(iterations)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"]
        reason = lines[-1].removeprefix("edgevt: error: ")  # the child's own one-line error
        raise EdgevtError(f"benchmarking {artifact} failed: {reason}")
    return BenchResult(**json.loads(proc.stdout.splitlines()[-1]))


def bench_artifacts(
    artifacts: list[Path],
    *,
    threads: list[int] | tuple[int, ...] = (1,),
    batch: int = 1,
    warmup: int = 10,
    seconds: float = 3.0,
    iterations: int = 20,
    out: str | Path | None = None,
) -> list[tuple[Any, Path]]:
    """Host latency of each artifact at each thread count; one JSON result file per pair.

    Results land in ``out`` or in ``bench/`` of the artifact's own folder (its run directory,
    whose manifest records a ``bench`` stage). Each measurement runs in its own process.
    Returns (BenchResult, json path) pairs, grouped
    by thread count so each group's first entry is the baseline.
    """
    import contextlib

    from edgevt.errors import EdgevtError
    from edgevt.io import write_json
    from edgevt.run import MANIFEST, RunDir, read_manifest, run_lock
    from edgevt.targets import read_artifact_info, target_for_path

    for path in artifacts:
        if not path.exists():
            raise EdgevtError(f"{path} does not exist (edgevt bench takes exported artifacts).")
        if target_for_path(path) is not None:  # a damaged file fails before any result is written
            read_artifact_info(path)
    bad = [n for n in threads if n < 1]
    if bad:
        raise EdgevtError(f"--threads {bad[0]}: thread counts must be >= 1.")
    results: list[tuple[Any, Path]] = []
    summaries: dict[Path, dict[str, Any]] = {}  # run directory -> its bench stage results
    stems = [p.stem for p in artifacts]
    # model.onnx of two runs into one -o folder: name each result by its run too
    by_run = out is not None and len(set(stems)) < len(stems)
    runs = [] if out is not None else [
        d for d in dict.fromkeys(p.parent for p in artifacts) if (d / MANIFEST).is_file()
    ]  # fmt: skip
    with contextlib.ExitStack() as held:
        for run_dir in runs:  # a locked or damaged run fails before any result is written
            held.enter_context(run_lock(run_dir))
            read_manifest(run_dir)
        for n in threads:
            for path in artifacts:
                result = benchmark_isolated(path, n, batch, warmup, seconds, iterations)
                folder = Path(out) if out is not None else path.parent / "bench"
                name = result_name(path, n, batch)
                name = f"{path.parent.name}-{name}" if by_run else name
                json_path = write_json(folder / name, result.to_dict())
                summaries.setdefault(path.parent, {})[json_path.stem] = {
                    k: getattr(result, k) for k in ("p50_ms", "p90_ms", "p99_ms", "batch")
                }
                results.append((result, json_path))
        for run_dir in runs:  # one manifest update per run directory
            run = RunDir(run_dir)
            recorded = run.manifest["stages"].get("bench", {}).get("results", {})
            run.record(
                "bench",
                {"artifacts": sorted(p.name for p in artifacts if p.parent == run_dir)},
                {"warmup": warmup, "seconds": seconds, "iterations": iterations},
                results={**recorded, **summaries.get(run_dir, {})},
            )
    return results


def _main(argv: list[str]) -> int:
    import json
    import sys

    from edgevt.errors import EdgevtError
    from edgevt.runners import open_runner

    artifact, threads, batch, warmup, seconds, iterations = argv
    try:
        runner = open_runner(Path(artifact), threads=int(threads))
        result = benchmark(runner, int(batch), int(warmup), float(seconds), int(iterations))
    except EdgevtError as exc:
        print(f"edgevt: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
