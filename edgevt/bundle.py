"""On-device benchmark bundles: everything a device needs to check and time a run's artifacts.

``make_bundle(run_dir, "raspberry-pi-5", out)`` writes a self-contained folder:

* ``models/``: the run's artifacts that the device's profile can run;
* ``samples.npz``: a few real images, preprocessed as the artifacts expect, with the logits each
  artifact produced on this host, so the device proves it computes the same thing before it is
  timed;
* ``run_bundle.py``: a standalone runner (numpy + the device's runtime, nothing from edgevt);
* ``bundle.json`` (what is inside) and ``README.md`` (the exact commands, over ssh/adb);
* for TensorRT devices, ``trtexec.sh`` that builds the engines on the device from the ONNX.

The runner writes ``results/<device>-<time>.json``; ``edgevt report`` reads it beside the host
results.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevt.devices import DeviceProfile, load_profile
from edgevt.errors import EdgevtError
from edgevt.io import artifact_size, atomic_path, write_json

RUNNER = Path(__file__).with_name("bundle_runner.py")
SUFFIXES = {"onnx": ".onnx", "tflite": ".tflite", "mlpackage": ".mlpackage", "engine": ".engine"}


@dataclass
class Bundle:
    path: Path
    device: DeviceProfile
    models: list[str]
    samples: int


def bundle_artifacts(run_dir: Path, device: DeviceProfile) -> list[Path]:
    """The run's artifacts this device can run, in the profile's order of preference."""
    found = []
    for kind in device.artifacts:
        found += sorted(p for p in run_dir.glob(f"*{SUFFIXES[kind]}") if not p.name.startswith("."))
    return found


def make_bundle(
    run_dir: str | Path,
    device: str | Path,
    out: str | Path,
    *,
    samples: int = 8,
    data: str | Path | None = None,
    force: bool = False,
) -> Bundle:
    """Write a bundle of ``run_dir``'s artifacts for ``device`` into ``out`` (see module doc)."""
    from edgevt.api import open_runner
    from edgevt.data.imagenet import default_data_root, sample_batch

    run_dir, out = Path(run_dir), Path(out)
    profile = load_profile(device)
    if not run_dir.is_dir():
        raise EdgevtError(f"run directory {run_dir} does not exist.")
    artifacts = bundle_artifacts(run_dir, profile)
    if not artifacts:
        kinds = ", ".join(SUFFIXES[k] for k in profile.artifacts)
        raise EdgevtError(
            f"{run_dir} has no artifact {profile.name} runs ({kinds}); export one first, e.g. "
            f"`edgevt export MODEL --target {_export_target(profile)} -o {run_dir}`."
        )
    if out.exists() and any(out.iterdir()) and not force:
        raise EdgevtError(f"{out} exists and is not empty; choose another -o or pass --force.")
    if samples < 1:
        raise EdgevtError("--samples must be >= 1.")

    first = open_runner(artifacts[0])
    folder = Path(data) if data else default_data_root() / "imagenet-val1000"
    inputs, described = sample_batch(first.info.preprocess, folder, samples)
    if inputs is None:
        raise EdgevtError(f"no sample images: {described}; pass --data DIR.")

    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "models").mkdir(parents=True)
    arrays: dict[str, np.ndarray] = {"inputs": inputs}
    models: dict[str, dict] = {}
    for path in artifacts:
        runner = open_runner(path, threads=1)
        if runner.info.preprocess != first.info.preprocess:
            raise EdgevtError(f"{path.name} expects other preprocessing than {artifacts[0].name}.")
        key = "expected_" + path.stem
        arrays[key] = np.concatenate([runner.infer(inputs[i : i + 1]) for i in range(samples)])
        runner.deactivate()
        target = staging / "models" / path.name
        (shutil.copytree if path.is_dir() else shutil.copy2)(path, target)
        models[path.name] = {
            "precision": runner.info.precision,
            "target": runner.info.target,
            "expected": key,
            "size_bytes": artifact_size(path),
            "ort_optimization": runner.info.extra.get("ort_optimization", "all"),
        }
    np.savez(staging / "samples.npz", **arrays)
    shutil.copy2(RUNNER, staging / "run_bundle.py")
    write_json(
        staging / "bundle.json",
        {
            "format": "edgevt.bundle/1",
            "device": profile.name,
            "backend": profile.backend,
            "run": run_dir.resolve().name,
            "model": first.info.model,
            "weights": first.info.weights,
            "threads": list(profile.threads),
            "samples": described,
            "models": models,
        },
    )
    if profile.backend == "tensorrt":
        _write_trtexec(staging, list(models), first.info.preprocess.input_size)
    with atomic_path(staging / "README.md") as tmp:
        tmp.write_text(_readme(profile, first.info.model, list(models), out.name))
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)  # the bundle appears whole or not at all
    return Bundle(out, profile, list(models), samples)


def _export_target(profile: DeviceProfile) -> str:
    return {"litert": "tflite", "tensorrt": "tensorrt", "coreml": "coreml"}.get(
        profile.backend, "onnx"
    )


def _write_trtexec(folder: Path, models: list[str], size: int) -> None:
    lines = [
        "#!/usr/bin/env bash",
        "# Build and time a TensorRT engine from each bundled ONNX model, on the Jetson itself",
        "# (engines are specific to the GPU and TensorRT version that built them).",
        "set -euo pipefail",
        'TRTEXEC="${TRTEXEC:-/usr/src/tensorrt/bin/trtexec}"',
        'cd "$(dirname "$0")"',
        "mkdir -p results",
    ]
    for name in models:
        stem = Path(name).stem
        # QDQ models carry their own int8 scales (explicit quantization); fp32 ONNX runs in fp16.
        flags = "--int8 --fp16" if "int8" in stem else "--fp16"
        lines.append(
            f'"$TRTEXEC" --onnx=models/{name} {flags} --shapes=images:1x3x{size}x{size} '
            f"--saveEngine=models/{stem}.engine --exportTimes=results/{stem}-trtexec-times.json"
        )
    with atomic_path(folder / "trtexec.sh") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
        tmp.chmod(0o755)


def _readme(profile: DeviceProfile, model: str, models: list[str], name: str) -> str:
    run = "python3 run_bundle.py"
    if profile.connect == "adb":
        reach = f"""```bash
adb push {name} /data/local/tmp/{name}
adb shell 'cd /data/local/tmp/{name} && {run}'      # python3 from Termux (see below)
adb pull /data/local/tmp/{name}/results ./{name}-results
```"""
    elif profile.connect == "macos":
        reach = f"""```bash
cd {name} && {run} --compute-units ALL    # also CPU_ONLY, CPU_AND_GPU, CPU_AND_NE
```"""
    elif profile.connect == "local":
        reach = f"""```bash
cd {name} && {run}
```"""
    else:
        reach = f"""```bash
scp -r {name} user@{profile.name}.local:~/
ssh user@{profile.name}.local 'cd ~/{name} && {run}'
scp -r user@{profile.name}.local:~/{name}/results ./{name}-results
```"""
    trt = ""
    if profile.backend == "tensorrt":
        trt = """
Engines are built on the Jetson. With TensorRT's Python API the runner can time an `.engine`;
the simplest route is `trtexec`, which builds and times each model in one go:

```bash
./trtexec.sh            # writes models/*.engine and results/*-trtexec-times.json
python3 run_bundle.py --models model_int8.engine
```
"""
    needs = {
        ".onnx": "onnxruntime" if profile.backend != "tensorrt" else "TensorRT (trtexec)",
        ".tflite": "ai-edge-litert (or tflite-runtime)",
        ".mlpackage": "coremltools (macOS)",
        ".engine": "TensorRT",
    }
    runtimes = sorted({needs[Path(m).suffix] for m in models})
    return f"""# edgevt bundle: {model} on {profile.description}

Models: {", ".join(models)}; they need numpy and {", ".join(runtimes)}.

1. Install the runtime on the device: `{profile.runtime_install}`
   (for .onnx models on a CPU device: `pip install onnxruntime numpy`)
2. Copy this folder to the device, run it, and bring the results back:

{reach}
{trt}
`run_bundle.py` first runs the bundled sample images and compares the logits with the ones
this host computed for the same files (cosine >= 0.99, else the model is reported as FAILED
and not timed), then times batch-1 inference (`--threads`, `--seconds`, `--iterations`).
It writes `results/{profile.name}-<time>.json`. Give that file to the report:

```bash
edgevt report RUN_DIR --device-results {name}-results/*.json -o reports/NAME
```
"""
