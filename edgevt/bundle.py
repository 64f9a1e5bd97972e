"""On-device benchmark bundles: everything a device needs to check and time a run's artifacts.

``make_bundle(run_dir, "raspberry-pi-5", out)`` writes a self-contained folder:

* ``models/``: the run's artifacts that the device's profile can run;
* ``samples.npz``: a few real images, preprocessed as the artifacts expect, with the logits each
  artifact produced on this host, so the device proves it computes the same thing before it is
  timed;
* ``eval.npz`` (``eval_images`` > 0): labelled images as uint8 crops with each artifact's
  top-5 on this host, which the device scores itself on (accuracy on the device);
* ``run_bundle.py``: a standalone runner (numpy + the device's runtime, nothing from edgevt);
* ``bundle.json`` (what is inside) and ``README.md`` (the exact commands, over ssh/adb);
* what the device's targets add (for TensorRT, ``trtexec.sh`` that builds the engines on the
  device from the ONNX);
* ``op_profile`` (a .tflite int8 run): ``models/profile/``, the int8 op-type profile's files
  (full int8, one op type in float per file, the fewest-partitions group), which
  ``run_bundle.py --op-profile`` times on the device; ``edgevt export --profile-on RESULTS``
  chooses the int8 recipe from those timings.

Which files go in is decided by the ArtifactInfo each one carries: its target must be one the
device's profile names.

The runner writes ``results/<device>-<time>.json``; ``edgevt report`` reads it beside the host
results.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevt.artifact import ArtifactInfo
from edgevt.devices import DeviceProfile, load_profile
from edgevt.errors import EdgevtError, as_edgevt_error, path_problem
from edgevt.io import artifact_size, atomic_path, write_json
from edgevt.runners import open_runner
from edgevt.targets import get_target, read_artifact_info, target_for_path

RUNNER = Path(__file__).with_name("bundle_runner.py")


@dataclass
class Bundle:
    path: Path
    device: DeviceProfile
    models: list[str]
    samples: int


def bundle_artifacts(
    run_dir: Path, device: DeviceProfile, left_out: list[str] | None = None
) -> list[Path]:
    """The run's artifacts this device can run, in the profile's order of preference: those
    whose embedded ArtifactInfo names one of the device's targets, and that target says the
    device runs (the names of those it does not are added to ``left_out``)."""
    found: dict[str, list[Path]] = {t: [] for t in device.targets}
    for path in sorted(run_dir.iterdir()):
        if path.name.startswith(".") or target_for_path(path) is None:
            continue
        info = read_artifact_info(path)
        if info.target not in found:
            continue
        if get_target(info.target).runs_on(info, device):
            found[info.target].append(path)
        elif left_out is not None:
            left_out.append(path.name)
    return [p for paths in found.values() for p in paths]


def make_bundle(
    run_dir: str | Path,
    device: str | Path,
    out: str | Path,
    *,
    samples: int = 8,
    data: str | Path | None = None,
    force: bool = False,
    eval_images: int = 0,
    eval_data: str | Path | None = None,
    op_profile: bool = False,
) -> Bundle:
    """Write a bundle of ``run_dir``'s artifacts for ``device`` into ``out`` (see module doc)."""
    from edgevt.data.imagenet import default_data_root, no_images_message, sample_batch

    run_dir, out = Path(run_dir), Path(out)
    profile = load_profile(device)
    if not run_dir.is_dir():
        raise EdgevtError(
            path_problem(run_dir, "run directory", folder=True)
            + "; pass the -o folder of `edgevt export`."
        )
    if (run_dir / "manifest.json").is_file():  # a damaged record of the run: say so now
        from edgevt.run import check_recorded_files, read_manifest

        check_recorded_files(run_dir, read_manifest(run_dir))
    left_out: list[str] = []
    artifacts = bundle_artifacts(run_dir, profile, left_out)
    if not artifacts:
        kinds = ", ".join(sorted({get_target(t).spec.suffix for t in profile.targets}))
        built = f" ({', '.join(left_out)} were built for another device)" if left_out else ""
        raise EdgevtError(
            f"{run_dir} has no artifact {profile.name} runs ({kinds}){built}; export one "
            "first, e.g. "
            f"`edgevt export MODEL --target {profile.targets[0]} -o {run_dir}`."
        )
    if out.exists() and not out.is_dir():
        raise EdgevtError(f"-o {out} is a file, not a folder; choose another -o.")
    for what, folder in (("the run directory", run_dir), ("the --data folder", data)):
        if folder is not None and _overlaps(out, Path(folder)):
            raise EdgevtError(
                f"-o {out} is, holds or lies inside {what} {folder}; a bundle replaces its "
                "folder: choose another -o."
            )
    if out.exists() and any(out.iterdir()):
        if not force:
            raise EdgevtError(f"{out} exists and is not empty; choose another -o or pass --force.")
        if not (out / "bundle.json").is_file():  # --force replaces bundles, nothing else
            raise EdgevtError(
                f"{out} is not an edgevt bundle (no bundle.json), so --force will not replace "
                "it; choose another -o or empty it yourself."
            )
    if samples < 1:
        raise EdgevtError("--samples must be >= 1.")
    if eval_images < 0:
        raise EdgevtError("--eval-images must be >= 0 (0: no accuracy run on the device).")
    if eval_images and eval_data is not None and not Path(eval_data).is_dir():
        raise EdgevtError(no_images_message("--eval-data", eval_data))

    if data is not None and not Path(data).is_dir():
        raise EdgevtError(no_images_message("--data", data))
    if op_profile and ("tflite" not in profile.targets or not (run_dir / "model.tflite").is_file()):
        raise EdgevtError(
            f"--op-profile times LiteRT int8 files on the device: {profile.name} must run "
            f"tflite and {run_dir} must hold an int8 TFLite export (`edgevt export MODEL "
            "--target tflite --int8 ...`)."
        )
    first = open_runner(artifacts[0])
    folder = Path(data) if data else default_data_root() / "imagenet-val1000"
    inputs, described = sample_batch(first.info.preprocess, folder, samples)
    if inputs is None:
        raise EdgevtError(f"no sample images: {described}; pass --data DIR.")

    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        (staging / "models").mkdir(parents=True)
        models, infos = _copy_models(staging, artifacts, inputs, first.info.preprocess)
        evaluation = None
        if eval_images:
            folder = Path(eval_data) if eval_data else default_data_root() / "imagenet-val1000"
            evaluation = _eval_subset(staging, artifacts, first.info.preprocess, folder,
                                      eval_images)  # fmt: skip
        profiled = _op_profile(staging, run_dir, inputs) if op_profile else None
        shutil.copy2(RUNNER, staging / "run_bundle.py")
        builds = {}  # what the device builds from the bundled files (TensorRT engines)
        for name in profile.targets:
            builds.update(get_target(name).device_builds(infos))
        write_json(
            staging / "bundle.json",
            {
                "format": "edgevt.bundle/1",
                "device": profile.name,
                "targets": list(profile.targets),
                "run": run_dir.resolve().name,
                "model": first.info.model,
                "weights": first.info.weights,
                "threads": list(profile.threads),
                "samples": described,
                "models": models,
                **({"builds": builds} if builds else {}),
                **({"eval": evaluation} if evaluation else {}),
                **({"op_profile": profiled} if profiled else {}),
            },
        )
        for name in profile.targets:  # what each of the device's targets adds (a build script)
            get_target(name).bundle_files(staging, infos, first.info.preprocess.input_size)
        with atomic_path(staging / "README.md") as tmp:
            tmp.write_text(_readme(profile, first.info.model, infos, out.name, op_profile))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)  # the bundle appears whole or not at all
    except BaseException as exc:  # a corrupt artifact, a full disk, Ctrl-C: no half bundle
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):  # copying names its source; the bundle is what failed
            named = as_edgevt_error(exc, path=out)
            if named is not None:
                raise named from exc
        raise
    return Bundle(out, profile, list(models), samples)


def _overlaps(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def _copy_models(
    staging: Path, artifacts: list[Path], inputs: np.ndarray, preprocess
) -> tuple[dict[str, dict], dict[str, ArtifactInfo]]:
    """Copy each artifact into ``models/`` with the logits this host computes for the samples
    (``samples.npz``): bundle.json's model entries, and each file's own info."""
    arrays: dict[str, np.ndarray] = {"inputs": inputs}
    models: dict[str, dict] = {}
    infos: dict[str, ArtifactInfo] = {}
    samples = len(inputs)
    for path in artifacts:
        runner = open_runner(path, threads=1)
        if runner.info.preprocess != preprocess:
            raise EdgevtError(f"{path.name} expects other preprocessing than the first artifact.")
        key = "expected_" + path.name  # the name, not the stem: model_int8.onnx and .tflite
        arrays[key] = np.concatenate([runner.infer(inputs[i : i + 1]) for i in range(samples)])
        runner.deactivate()
        target = staging / "models" / path.name
        (shutil.copytree if path.is_dir() else shutil.copy2)(path, target)
        infos[path.name] = runner.info
        models[path.name] = {
            "precision": runner.info.precision,
            "target": runner.info.target,
            "expected": key,
            "size_bytes": artifact_size(path),
            "ort_optimization": runner.info.extra.get("ort_optimization", "all"),
        }
    np.savez(staging / "samples.npz", **arrays)
    return models, infos


def _op_profile(staging: Path, run_dir: Path, inputs: np.ndarray) -> dict[str, object]:
    """The run's int8 op-type profile files in ``models/profile/`` (fp32: the bundled
    model.tflite) and each one's cosine to fp32 on the sample images here: LiteRT's int8
    kernels compute the same integers on ARM, so the device needs only to time them."""
    from edgevt.targets.tflite_profile import cosines

    folder = staging / "models" / "profile"
    folder.mkdir()
    found, info, _ = get_target("tflite").profile_candidates(run_dir, folder)
    files = {k: "model.tflite" if k == "fp32" else f"profile/{p.name}"
             for k, p in found.files.items()}  # fmt: skip
    cosine = cosines({k: staging / "models" / n for k, n in files.items()}, info, inputs)
    return {"model": info.model, "files": files, "float_types": found.float_types,
            "partitions": found.partitions, "census": found.census, "cosine": cosine}  # fmt: skip


def _eval_subset(
    staging: Path, artifacts: list[Path], preprocess, folder: Path, n: int
) -> dict[str, object]:
    """``eval.npz``: ``n`` labelled images as uint8 crops (the device normalises them: a
    quarter of the size, no Pillow there) and each artifact's top-5 on this host, so the
    device scores itself against the labels and against the host image by image."""
    from PIL import Image

    from edgevt.data.imagenet import open_dataset

    dataset = open_dataset(folder, require_labels=True).subset(n)
    crops, labels = [], []
    for sample in dataset.samples:
        with Image.open(sample.path) as image:
            crops.append(preprocess.crop(image))
        labels.append(sample.label)
    images, truth = np.stack(crops), np.asarray(labels, np.int64)
    arrays: dict[str, np.ndarray] = {"images": images, "labels": truth}
    models: dict[str, dict] = {}
    for path in artifacts:
        with open_runner(path) as runner:
            logits = np.concatenate([runner.infer(preprocess.normalize(c)[None]) for c in images])
        top5 = np.argsort(-logits, axis=1)[:, :5]
        arrays["top5_" + path.name] = top5.astype(np.int32)
        models[path.name] = {
            "top5": "top5_" + path.name,
            "top1_pct": 100.0 * float((top5[:, 0] == truth).mean()),
            "top5_pct": 100.0 * float((top5 == truth[:, None]).any(1).mean()),
        }
    np.savez_compressed(staging / "eval.npz", **arrays)
    infos = {a.name: read_artifact_info(a) for a in artifacts}
    fp32 = [name for name, info in infos.items() if info.precision == "fp32"]
    reference = (fp32 or [artifacts[0].name])[0]  # what "agreement with the host's fp32" means
    for name, info in infos.items():  # ... for each file: its own target's fp32 where there is one
        same = [f for f in fp32 if infos[f].target == info.target]
        models[name]["fp32"] = (same or [reference])[0]
    return {"images": len(images), "data": str(folder), "mean": list(preprocess.mean),
            "std": list(preprocess.std), "reference": reference, "host": models}  # fmt: skip


_PROFILE_README = """
With `--op-profile` it then times the int8 op-type profile's files in `models/profile/` (full
int8, one op type in float per file, the group with the fewest XNNPACK partitions) in
interleaved rounds, so that the int8 recipe is chosen from this device's own timings:

```bash
edgevt export {model} --target tflite --int8 --calib DIR \\
    --profile-on {name}-results/DEVICE-TIME.json
```
"""


def _runtime(profile: DeviceProfile, name: str) -> str:
    """What runs a file on the device: the first of its targets that takes such files (a
    Jetson's TensorRT builds engines from every ONNX file)."""
    for target in map(get_target, profile.targets):
        if any(name.endswith(s) for s in target.spec.suffixes):
            return target.spec.device_runtime
    return "?"


def _readme(
    profile: DeviceProfile, model: str, models: dict[str, ArtifactInfo], name: str,
    op_profile: bool = False,
) -> str:  # fmt: skip
    run = "python3 run_bundle.py" + " --op-profile" * op_profile
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
    extra = "".join(get_target(t).bundle_readme() for t in profile.targets)
    runtimes = sorted({_runtime(profile, m) for m in models})
    return f"""# edgevt bundle: {model} on {profile.description}

Models: {", ".join(models)}; they need numpy and {", ".join(runtimes)}.

1. Install the runtime on the device: `{profile.runtime_install}`
   (for .onnx models on a CPU device: `pip install onnxruntime numpy`)
2. Copy this folder to the device, run it, and bring the results back:

{reach}
{extra}
`run_bundle.py` first runs the bundled sample images and compares the logits with the ones
this host computed for the same files (cosine >= 0.99, else the model is reported as FAILED
and not timed), then times batch-1 inference (`--threads`, `--seconds`, `--iterations`).
Where the bundle carries labelled images (`eval.npz`), it also scores each model on them
(top-1/top-5, and image by image against the same file on the host; `--no-eval` skips it).
It writes `results/{profile.name}-<time>.json`. Give that file to the report:

```bash
edgevt report RUN_DIR --device-results {name}-results/*.json -o reports/NAME
```
{_PROFILE_README.format(model=model, name=name) if op_profile else ""}
"""
