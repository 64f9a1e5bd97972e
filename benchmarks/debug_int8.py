"""`edgevt debug` over the zoo: per-tensor SQNR and faithfulness of every int8 file.

For each model (EfficientNet-Lite0 with its real checkpoint, LeViT-128S and CvT-13 with random,
non-degenerate weights) and each target (onnx, tensorrt, tflite, coreml): export int8 from a
percentile table of `--calib-size` imagenet-sample1000 images, then debug the file on
`--limit` of those images. Prints and writes a summary (faithfulness step by step, end-to-end
drift, output SQNR and cosine, seconds) and each file's per-tensor table.

    .venv/bin/python benchmarks/debug_int8.py [--models ...]
        [--targets onnx tensorrt tflite coreml] [--limit 32] [--work runs/debug-int8]
        [--out reports/debug_int8.md]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from report_file import command_line, write_report  # noqa: E402  (benchmarks/ folder)

from edgevt import api
from edgevt.data.imagenet import default_data_root
from edgevt.debug import FAITHFUL_COSINE, debug, format_table
from edgevt.targets import artifact_name, get_target

REPO = Path(__file__).resolve().parent.parent
MODELS = {"efficientnet_lite0": True, "levit_128s": False, "cvt_13": False}  # name: real weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--targets", nargs="+", default=["onnx", "tensorrt", "tflite", "coreml"])
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--calib-size", type=int, default=128)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "debug-int8")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "debug_int8.md")
    args = parser.parse_args()
    calib = default_data_root() / "imagenet-sample1000"
    rows, tables = [], []
    for model in args.models:
        for target in args.targets:
            run = args.work / f"{model}-{target}"
            spec = get_target(target).spec
            int8 = run / artifact_name(spec, spec.int8_precision)
            if not int8.exists():
                api.export(model, target, pretrained=MODELS.get(model, False), out=run,
                           int8=True, calib=calib, calib_size=args.calib_size)  # fmt: skip
            start = time.perf_counter()
            result, _ = debug(int8, calib, limit=args.limit)
            seconds = time.perf_counter() - start
            rows.append((model, target, "real" if MODELS.get(model) else "random", result,
                         seconds))  # fmt: skip
            tables.append((f"{model}, {target}", format_table(result)))
            print(f"{model} {target}: {seconds:.0f} s", flush=True)
    lines = [
        "# `edgevt debug`: per-tensor SQNR and faithfulness of int8 files",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}. Each int8 file from a "
        f"percentile table of {args.calib_size} imagenet-sample1000 images; debugged on the "
        f"first {args.limit} of them (the debugger, like calibration, reads calibration "
        "images, never the evaluation set). *Faithful*: the file "
        "computes the tensor as edgevt's simulation of its target does from the file's own "
        f"upstream values (cosine >= {FAITHFUL_COSINE}); *drifted*: faithful step by step, yet "
        "apart end to end (rounding-boundary flips upstream, amplified; on TFLite also the "
        "tensors outside the table that it stores in int8 on ranges of its own). QDQ ONNX "
        "files are read in ONNX Runtime with graph optimizations off, .tflite files in LiteRT's "
        "built-in kernels with every tensor preserved, Core ML packages in edgevt's MIL "
        "interpreter. Seconds include loading, on a shared "
        "2-core machine.",
        "",
        "| model | target | weights | tensors | faithful | departures | drifted | logits SQNR "
        "vs fp32 dB | logits cosine vs simulation | seconds |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for model, target, weights, r, seconds in rows:
        sqnr = r.logits["sqnr_fp32_db"]
        lines.append(
            f"| {model} | {target} | {weights} | {len(r.tensors)} | "
            f"{100 * r.faithful_share:.1f} % | {len(r.departures)} | {len(r.drifted)} | "
            f"{'exact' if sqnr is None else f'{sqnr:.1f}'} | {r.logits['cosine_sim']:.5f} | "
            f"{seconds:.0f} |"
        )
    departures = [(m, t, d) for m, t, _, r, _ in rows for d in r.departures]
    lines += ["", "## Departures", ""]
    lines += [f"- {m} {t}: `{d.key}` (cosine {d.cosine_sim:.6f}): {d.why}"
              for m, t, d in departures] or ["None."]  # fmt: skip
    lines += ["", "## Per-tensor tables", ""]
    for title, table in tables:
        lines += [f"<details><summary>{title}</summary>", "", "```", table, "```", "",
                  "</details>", ""]  # fmt: skip
    write_report("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
