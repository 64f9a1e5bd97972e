"""Is the default `--int8` ever slower than fp32? Every --optimize recipe against fp32, per target.

For each model, one CalibrationTable; then, per target:
* tflite: the default export (`--optimize balanced`, which profiles every op type on this
  host and writes op_profile_tflite.json), the `latency` recipe from that same profile, and
  full int8 (`--optimize full`, what `--int8` wrote before recipes existed);
* onnx: the default int8 export (QDQ, ONNX Runtime).
All of a model's files of one target are timed together, at 1 and 2 threads, in interleaved
rounds with each file loaded only for its turn (batch 1, a real image), so every ratio is
from one run. Cosine and top-1 agreement are against the target's fp32 file on --check
images of imagenet-val1000 (random-weight models: agreement means little, see the README).

    .venv/bin/python benchmarks/int8_recipes.py [--models levit_128s cvt_13 efficientnet_lite0]
        [--targets tflite onnx] [--out reports/int8_recipes.md]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from report_file import command_line, cpu_flags, write_report  # noqa: E402  (benchmarks/)

from edgevt import api
from edgevt.data.imagenet import default_data_root, open_dataset
from edgevt.models import get_entry
from edgevt.op_profile import OpProfile, choose
from edgevt.runners import open_runner
from edgevt.timing import median_ms_loaded_in_turn, runner_turn
from edgevt.validate.evaluate import compare_logits

REPO = Path(__file__).resolve().parent.parent
REAL = {"efficientnet_lite0"}  # the zoo models with a real checkpoint here


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+",
                        default=["levit_128s", "cvt_13", "efficientnet_lite0"])  # fmt: skip
    parser.add_argument("--targets", nargs="+", default=["tflite", "onnx"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--calib-size", type=int, default=128)
    parser.add_argument("--check", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "int8-recipes")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "int8_recipes.md")
    args = parser.parse_args()
    started = time.perf_counter()
    root = default_data_root()
    sections = []
    for model in args.models:
        work = args.work / model
        table = work / "calibration.json"
        # random weights: an int8 file under the export's 0.9-cosine floor is still timed
        # (their cosine says little, README "random weights")
        common = dict(pretrained=model in REAL, progress=False, accept_degraded=model not in REAL)
        if not table.is_file():
            api.calibrate(model, data=root / "imagenet-sample1000", out=table,
                          pretrained=model in REAL, calib_size=args.calib_size, progress=False)
        for target in args.targets:
            t0 = time.perf_counter()
            files, notes, export_s = export_variants(model, target, work, table, common)
            rows = measure(model, files, args)
            sections.append((model, target, rows, notes, export_s))
            print(f"{model} {target}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    write_report(render(sections, args, time.perf_counter() - started), args.out)


def export_variants(model: str, target: str, work: Path, table: Path,
                    common: dict) -> tuple[dict[str, Path], list[str], float]:  # fmt: skip
    """The fp32 file and every int8 variant of ``target`` worth timing, by label; notes; the
    seconds the default int8 export took (its profile included)."""
    run = work / target
    t0 = time.perf_counter()
    out = api.export(model, target, out=run, int8=True, calib_table=table, **common)
    export_s = time.perf_counter() - t0
    default = out.artifacts[-1]
    balanced = default.details.get("float_types") or []
    label = "int8 (default" + (f": {' '.join(balanced)} float)" if balanced else ")")
    files = {"fp32": out.artifacts[0].path, label: default.path}
    if target != "tflite":
        return files, [], export_s
    latency = choose(OpProfile.load(run / "op_profile_tflite.json"), "latency")
    if latency and latency != balanced:
        lat = api.export(model, target, out=work / "tflite-latency", int8=True,
                         calib_table=table, float_ops=latency, **common)  # fmt: skip
        files[f"int8, --optimize latency ({' '.join(latency)} float)"] = lat.artifacts[-1].path
    if balanced:
        full = api.export(model, target, out=work / "tflite-full", int8=True,
                          calib_table=table, optimize="full", **common)  # fmt: skip
        files["full int8 (--optimize full)"] = full.artifacts[-1].path
    notes = [f"--optimize latency would keep {' '.join(latency) or 'nothing'} in float"]
    return files, notes, export_s


def measure(model: str, files: dict[str, Path], args) -> list[tuple]:
    entry = get_entry(model)
    dataset = open_dataset(default_data_root() / "imagenet-val1000").subset(args.check)
    x = next(dataset.batches(entry.preprocess, 1))[0]
    ms: dict[str, dict[int, float]] = {k: {} for k in files}
    for t in args.threads:
        loaders = {k: runner_turn(lambda p=p, t=t: open_runner(p, threads=t), x)
                   for k, p in files.items()}  # fmt: skip
        for k, v in median_ms_loaded_in_turn(loaders, args.rounds, args.iters).items():
            ms[k][t] = v
    logits = {}
    for k, path in files.items():
        with open_runner(path, threads=max(args.threads)) as runner:
            batches = dataset.batches(entry.preprocess, 16)
            logits[k] = np.concatenate([runner.infer(images) for images, _ in batches])
    rows = []
    for k, path in files.items():
        cmp = compare_logits(logits["fp32"], logits[k])
        rows.append((k, path.stat().st_size / 1e6 if path.is_file() else float("nan"),
                     cmp["cosine"], cmp["top1_agreement"], ms[k]))  # fmt: skip
    return rows


def render(sections, args, seconds: float) -> str:
    threads = args.threads
    lines = [
        "# int8 recipes against fp32, per target",
        "",
        "Batch 1 on this machine's CPU "
        f"({cpu_flags()}); each model's files of one target timed together in interleaved "
        f"rounds ({args.rounds} x {args.iters}), at {' and '.join(map(str, threads))} "
        f"thread(s). Table: percentile 99.99 on {args.calib_size} imagenet-sample1000 images. "
        f"Cosine and top-1 agreement vs the target's fp32 file on {args.check} "
        "imagenet-val1000 images. `vs fp32` is fp32's time over the variant's (above 1.00x: "
        "faster than fp32).",
        "",
    ]
    for model, target, rows, notes, export_s in sections:
        weights = "real checkpoint" if model in REAL else "random weights"
        lines += [f"### {model} ({weights}), {target}", ""]
        head = "| variant | MB | cosine | agreement |" + "".join(
            f" p50 ms {t}T | vs fp32 {t}T |" for t in threads
        ) + (f" {threads[-1]}T vs {threads[0]}T |" if len(threads) > 1 else "")
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        fp32 = rows[0][4]
        for label, mb, cos, agree, ms in rows:
            cells = [label, f"{mb:.1f}", f"{cos:.5f}", f"{agree:.3f}"]
            for t in threads:
                cells += [f"{ms[t]:.2f}", f"{fp32[t] / ms[t]:.2f}x"]
            if len(threads) > 1:
                cells.append(f"{ms[threads[0]] / ms[threads[-1]]:.2f}x")
            lines.append("| " + " | ".join(cells) + " |")
        what = ("fuse, convert, profile every op type, choose, quantize, time against fp32"
                if target == "tflite" else "fuse, convert, quantize")  # fmt: skip
        lines += ["", f"The default int8 export ({what}) took {export_s:.0f} s."
                  + "".join(f" {n}." for n in notes), ""]  # fmt: skip
    lines.append(f"Command: `{command_line()}` ({seconds / 60:.0f} min)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
