"""aarch64 instructions per inference of TFLite files on emulated Pi cores, beside x86 timings.

For each model: a TFLite export with every op in int8 (`--optimize full`: fp32 + full int8)
and one with the default latency-aware recipe (`--optimize balanced`, chosen from this x86
host's profile), from one CalibrationTable; for the models of `--arm-recipes`, also the
recipe chosen for each Pi from its own core's instruction counts (`--profile-on
raspberry-pi-5` / `raspberry-pi-4`), whose op-type profiles are tabulated too. Each file is
counted under qemu-aarch64 on cortex-a76 (Raspberry Pi 5, dotprod) and cortex-a72 (Pi 4, no
dotprod), or with `--cores cortex-x3` on Pixel 8's stand-in (QEMU's max without SME: dotprod
and i8mm), 1 thread (`edgevt profile --emulate`), and timed on this host at 1 thread
(interleaved rounds). A count is what the kernels XNNPACK picks for that core execute, not a
time.

    .venv/bin/python benchmarks/arm_instruction_counts.py [--models efficientnet_lite0
        levit_128s cvt_13] [--arm-recipes efficientnet_lite0 levit_128s]
        [--cores cortex-a76 cortex-a72] [--work runs/arm-counts]
        [--out reports/arm_instruction_counts.md]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from report_file import command_line, cpu_flags, write_report  # noqa: E402  (benchmarks/)

from edgevt import api
from edgevt.aarch64 import instruction_profile
from edgevt.data.imagenet import default_data_root
from edgevt.models import get_entry
from edgevt.runners import open_runner
from edgevt.timing import median_ms_loaded_in_turn, runner_turn

REPO = Path(__file__).resolve().parent.parent
DEVICE = "raspberry-pi-5"  # its bundle takes .tflite files; --core picks the emulated core
FOR_CORE = {  # --profile-on
    "cortex-a76": "raspberry-pi-5", "cortex-a72": "raspberry-pi-4", "cortex-x3": "pixel-8",
}
WEIGHTS = {"efficientnet_lite0": {"pretrained": True}}  # the others: random weights (seed 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+",
                        default=["efficientnet_lite0", "levit_128s", "cvt_13"])  # fmt: skip
    parser.add_argument("--arm-recipes", nargs="*",
                        default=["efficientnet_lite0", "levit_128s"])  # fmt: skip
    parser.add_argument("--cores", nargs="+", default=["cortex-a76", "cortex-a72"])
    parser.add_argument("--calib-size", type=int, default=64)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "arm-counts")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "arm_instruction_counts.md")
    args = parser.parse_args()
    calib = default_data_root() / "imagenet-sample1000"
    rows, profiles = [], []
    for model in args.models:
        start = time.perf_counter()
        weights = WEIGHTS.get(model, {})
        table = args.work / model / "calibration.json"
        if not table.is_file():
            api.calibrate(model, data=calib, calib_size=args.calib_size, out=table, **weights)
        files = {}
        for recipe in ("full", "balanced"):
            run = args.work / model / recipe
            if not (run / "model_int8.tflite").is_file():
                api.export(model, "tflite", out=run, int8=True, calib_table=table, calib=calib,
                           optimize=recipe, accept_degraded=True, **weights)  # fmt: skip
            if recipe == "full":
                files["fp32"] = run / "model.tflite"
            files[f"int8 {recipe}"] = run / "model_int8.tflite"
        for core in args.cores if model in args.arm_recipes else []:
            device = FOR_CORE[core]
            run = args.work / model / f"for-{device}"
            if not (run / "model_int8.tflite").is_file():
                api.export(model, "tflite", out=run, int8=True, calib_table=table, calib=calib,
                           profile_on=device, accept_degraded=True, **weights)  # fmt: skip
            files[f"int8 for {device}"] = run / "model_int8.tflite"
            profiles.append((model, core, run / f"op_profile_tflite_{device}_{core}.json"))
        counts = {core: {} for core in args.cores}
        for core in args.cores:
            for label, path in files.items():
                data, _ = instruction_profile(path, DEVICE, core, progress=False)
                counts[core][label] = data["files"][path.name]["instructions"]
        size = get_entry(model).preprocess.input_size
        x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
        ms = median_ms_loaded_in_turn(
            {label: runner_turn(lambda p=path: open_runner(p, threads=1), x)
             for label, path in files.items()}, rounds=5, iters=10,
        )  # fmt: skip
        for label in files:
            rows.append(
                f"| {model} | {label} | "
                + " | ".join(f"{counts[c][label] / 1e6:.1f}" for c in args.cores)
                + " | "
                + " | ".join(f"{counts[c]['fp32'] / counts[c][label]:.2f}x" for c in args.cores)
                + f" | {ms[label]:.2f} | {ms['fp32'] / ms[label]:.2f}x |"
            )
        print(f"{model}: {time.perf_counter() - start:.0f} s", flush=True)
    cores = args.cores
    text = "\n".join([
        "# aarch64 instructions per inference (emulated) beside x86 latency: TFLite",
        "",
        f"Command: `{command_line()}`",
        "",
        "Each file counted under `qemu-aarch64 -cpu CORE` with the instruction-counting plugin "
        "(`edgevt profile --emulate raspberry-pi-5 --core CORE`), 1 thread, the mean of 3 "
        "inferences after 2 warm-ups: what XNNPACK's kernels for that core execute, **an "
        "instruction count, not a time**. x86: this host "
        f"({cpu_flags()}), 1 thread, median of 5 interleaved rounds. `int8 full`: every op int8 "
        "(`--optimize full`); `int8 balanced`: the default recipe, chosen from this x86 host's "
        "profile. EfficientNet-Lite0 has its real checkpoint; the transformers random weights "
        "(seed 0; counts and speed do not depend on the values).",
        "",
        "| model | file | " + " | ".join(f"M instr. {c}" for c in cores) + " | "
        + " | ".join(f"fewer than fp32 {c}" for c in cores) + " | x86 ms 1T | x86 vs fp32 |",
        "|---|---|" + "--:|" * (2 * len(cores) + 2),
        *rows,
        "",
        "Read a row's counts against its model's fp32 on the same core: XNNPACK picks its int8 "
        "kernels by the core's features, and cortex-a72 lacks the dot-product instructions "
        "cortex-a76 has; cortex-x3 (Pixel 8's stand-in: QEMU's `max` without SME) adds i8mm. "
        "`int8 for DEVICE`: the default recipe chosen from that device's core's own counts "
        "(`edgevt export --profile-on DEVICE`), where the x86 one was chosen from this host's "
        "timings.",
        *profile_tables(profiles),
    ]) + "\n"  # fmt: skip
    write_report(text, args.out)


def profile_tables(profiles: list[tuple[str, str, Path]]) -> list[str]:
    """Per model, each op type's int8 cost on each core (full int8 minus the file with that
    type in float, M instructions; positive: costlier in int8) and what each core's
    `balanced` recipe keeps in float."""
    from edgevt.op_profile import OpProfile, choose

    out = []
    for model in dict.fromkeys(m for m, _, _ in profiles):
        loaded = {core: OpProfile.load(path) for m, core, path in profiles if m == model}
        kept = {core: set(choose(p, "balanced")) for core, p in loaded.items()}
        types = sorted({v.float_types[0] for p in loaded.values() for v in p.types})
        cores = list(loaded)
        out += ["", f"### {model}: what each op type costs in int8, per core (M instructions)",
                "", "| op type | " + " | ".join(f"int8 cost {c}" for c in cores) + " | "
                + " | ".join(f"float for {c}" for c in cores) + " |",
                "|---|" + "--:|" * len(cores) + ":-:|" * len(cores)]  # fmt: skip
        for t in types:
            out.append(f"| {t} | " + " | ".join(f"{loaded[c].cost(t):+.2f}" for c in cores)
                       + " | " + " | ".join("float" if t in kept[c] else "" for c in cores)
                       + " |")  # fmt: skip
    return out


if __name__ == "__main__":
    main()
