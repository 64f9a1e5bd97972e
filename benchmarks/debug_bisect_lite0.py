"""Does `edgevt debug --max-drop` find the culprits on real weights? The real Lite0 with an
aggressive recipe (per-tensor weights, min/max ranges), its float set bisected on calibration
images, then the file exported with that set scored on imagenet-val1000.

    .venv/bin/python benchmarks/debug_bisect_lite0.py [--max-drop 0.5] [--bisect-images 256]
        [--work runs/debug-bisect-lite0] [--out reports/debug_bisect_lite0.md]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from report_file import command_line, write_report  # noqa: E402  (benchmarks/ folder)

from edgevt import api
from edgevt.data.imagenet import default_data_root
from edgevt.debug import debug

REPO = Path(__file__).resolve().parent.parent
MODEL = "efficientnet_lite0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-drop", type=float, default=0.5)
    parser.add_argument("--bisect-images", type=int, default=256)
    parser.add_argument("--config", type=Path, default=REPO / "calib" / "per_tensor_weights.json")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "debug-bisect-lite0")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "debug_bisect_lite0.md")
    args = parser.parse_args()
    root = default_data_root()
    calib, val = root / "imagenet-sample1000", root / "imagenet-val1000"
    # The recipe is bad on purpose (cosine ~0.85 to fp32): keep the file the guard would refuse.
    ptq = api.export(MODEL, pretrained=True, out=args.work / "ptq", int8=True, calib=calib,
                     method="minmax", quant_config=args.config, eval_data=val,
                     accept_degraded=True)  # fmt: skip
    start = time.perf_counter()
    result, _ = debug(ptq.run_dir.path / "model_int8.onnx", calib, limit=8,
                      max_drop=args.max_drop, bisect_images=args.bisect_images)  # fmt: skip
    seconds = time.perf_counter() - start
    chosen = result.bisect
    fixed = api.export(MODEL, pretrained=True, out=args.work / "fixed", int8=True,
                       calib_table=ptq.run_dir.path / "calibration.json",
                       quant_config=chosen["config"], eval_data=val)  # fmt: skip
    fp32 = ptq.evals["pytorch_fp32"]["top1"]
    rows = [("PTQ as exported", ptq.evals["model_int8.onnx"]),
            (f"{len(chosen['kept_float'])} ops in float (debug's choice)",
             fixed.evals["model_int8.onnx"])]  # fmt: skip
    lines = [
        f"# `edgevt debug --max-drop {args.max_drop}` on the real {MODEL}, aggressive recipe",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}. Recipe: "
        f"`{args.config.name}` (per-tensor weights) with min/max ranges on 512 "
        "imagenet-sample1000 images, target onnx (ONNX Runtime). The float set is chosen on "
        f"{args.bisect_images} imagenet-sample1000 images (the calibration folder), measured on "
        f"exported files ({chosen['files_checked']} checked, {seconds:.0f} s with the per-tensor "
        "pass); the result is scored on imagenet-val1000 (disjoint).",
        "",
        f"Goal: {chosen['goal']}; on the calibration images: {chosen['as_given']:.2f} as "
        f"exported, {chosen['measured']:.2f} with the chosen set "
        f"({'met' if chosen['met'] else 'not met'}).",
        "",
        f"Kept in float: {', '.join(f'`{op}`' for op in chosen['kept_float']) or 'none'}.",
        "",
        "| file | top-1 % on imagenet-val1000 | Δ vs PyTorch fp32 | lost / won (p) |",
        "|---|--:|--:|---|",
        f"| PyTorch fp32 | {fp32:.2f} | – | – |",
    ]
    for name, e in rows:
        vs = e["vs_pytorch_fp32"]
        lines.append(f"| {name} | {e['top1']:.2f} | {e['top1'] - fp32:+.2f} | "
                     f"{vs['lost']} / {vs['won']} (p={vs['p_value']:.2g}) |")  # fmt: skip
    write_report("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
