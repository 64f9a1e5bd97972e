"""Does `edgevt debug --max-drop` find the culprits on real weights? The real Lite0 with an
aggressive recipe (per-tensor weights, min/max ranges), its float set bisected on calibration
images, then the file exported with that set scored on imagenet-val1000, per target.

    .venv/bin/python benchmarks/debug_bisect_lite0.py [--targets onnx tflite] [--max-drop 0.5]
        [--bisect-images 1000] [--work runs/debug-bisect-lite0]
        [--out reports/debug_bisect_lite0.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from report_file import command_line, write_report  # noqa: E402  (benchmarks/ folder)

from edgevt import api
from edgevt.data.imagenet import default_data_root
from edgevt.debug import debug
from edgevt.quant.config import QuantConfig

REPO = Path(__file__).resolve().parent.parent
MODEL = "efficientnet_lite0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-drop", type=float, default=0.5)
    parser.add_argument("--targets", nargs="+", default=["onnx", "tflite"])
    parser.add_argument("--bisect-images", type=int, default=1000)
    parser.add_argument("--first", type=int, default=6,
                        help="also score the first N ops of debug's order in float")
    parser.add_argument("--config", type=Path, default=REPO / "calib" / "per_tensor_weights.json")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "debug-bisect-lite0")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "debug_bisect_lite0.md")
    args = parser.parse_args()
    root = default_data_root()
    calib, val = root / "imagenet-sample1000", root / "imagenet-val1000"
    lines = [
        f"# `edgevt debug --max-drop {args.max_drop}` on the real {MODEL}, aggressive recipe",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}. Recipe: "
        f"`{args.config.name}` (per-tensor weights) with min/max ranges on 512 "
        "imagenet-sample1000 images. The float set is chosen on "
        f"{args.bisect_images} imagenet-sample1000 images (the calibration folder): ranked in "
        "the simulation of the target, measured on exported files run by the target's runtime; "
        "the result is scored on imagenet-val1000 (disjoint). A TFLite file with a quant config "
        "quantizes only the ops the config names (the others, element-wise ones included, stay "
        "float), the full-int8 file as exported quantizes every op.",
        "",
        "| target | file | ops in float | top-1 % on imagenet-val1000 | Δ vs PyTorch fp32 | "
        "lost / won (p) | Δ on the calibration images |",
        "|---|---|--:|--:|--:|---|--:|",
    ]
    notes = []
    fp32_calib = None
    for target in args.targets:
        work = args.work / target
        # The recipe is bad on purpose (cosine ~0.85 to fp32): keep the file the guard refuses.
        ptq = api.export(MODEL, target, pretrained=True, out=work / "ptq", int8=True,
                         calib=calib, method="minmax", quant_config=args.config,
                         eval_data=val, accept_degraded=True)  # fmt: skip
        int8 = ptq.get("int8").path
        chosen, seconds = _earlier(int8, args)  # a long search: reuse one made with these settings
        if chosen is None:
            start = time.perf_counter()
            result, _ = debug(int8, calib, limit=8, max_drop=args.max_drop,
                              bisect_images=args.bisect_images)  # fmt: skip
            seconds = time.perf_counter() - start
            chosen = {**result.bisect, "seconds": seconds, "images": args.bisect_images}
            (int8.parent / "debug" / "bisect_settings.json").write_text(json.dumps(chosen))
        fixed = api.export(MODEL, target, pretrained=True, out=work / "fixed", int8=True,
                           calib_table=ptq.run_dir.path / "calibration.json", calib=calib,
                           quant_config=chosen["config"], eval_data=val)  # fmt: skip
        first = [op for op, _ in chosen["order"][: args.first]]
        config = work / f"first{args.first}.json"
        config.write_text(json.dumps(
            QuantConfig.load(args.config).keep_float(first).to_dict()))  # fmt: skip
        small = api.export(MODEL, target, pretrained=True, out=work / "first", int8=True,
                           calib_table=ptq.run_dir.path / "calibration.json", calib=calib,
                           quant_config=config, eval_data=val)  # fmt: skip
        fp32 = ptq.evals["pytorch_fp32"]["top1"]
        if fp32_calib is None:  # the yardstick the float set was chosen on
            fp32_calib = api.evaluate(MODEL, calib, pretrained=True, progress=False).top1
        table_ops = {op for op, _ in chosen["ranking"]}
        for name, run, kept in (("PTQ as exported", ptq, []),
                                ("debug's choice", fixed, chosen["kept_float"]),
                                (f"the first {args.first} of debug's order", small, first)):
            artifact = run.get("int8")
            e = run.evals[artifact.path.name]
            vs = e["vs_pytorch_fp32"]
            # ops the target's rules float beside the config's (ONNX Runtime: a conv between
            # float tensors); TFLite's float_ops name op types, not these
            also = [op for op in artifact.quantization.float_ops
                    if op in table_ops and op not in kept]  # fmt: skip
            floated = f"{len(kept)}" + (f" (+{', '.join(also)})" if also else "")
            on_calib = api.evaluate(artifact.path, calib, progress=False).top1
            lines.append(f"| {target} | {name} | {floated} | {e['top1']:.2f} | "
                         f"{e['top1'] - fp32:+.2f} | {vs['lost']} / {vs['won']} "
                         f"(p={vs['p_value']:.2g}) | {on_calib - fp32_calib:+.2f} |")  # fmt: skip
        notes += [
            "",
            f"**{target}** ({seconds:.0f} s for debug with bisection, {chosen['files_checked']} "
            f"files checked). Goal: {chosen['goal']}; on the calibration images "
            f"{chosen['as_given']:.2f} as exported, {chosen['measured']:.2f} with the chosen set "
            f"({'met' if chosen['met'] else 'not met'}). Kept in float, in the order chosen: "
            f"{', '.join(f'`{op}`' for op in chosen['kept_float']) or 'none'}"
            + (f"; the file also floats {', '.join(f'`{op}`' for op in chosen['also_float'])}"
               if chosen.get("also_float") else "") + ".",
        ]
        print("\n".join(lines + notes), flush=True)
    lines.insert(2, f"PyTorch fp32 top-1 on imagenet-val1000: {fp32:.2f} %, on the calibration "
                    f"images (imagenet-sample1000): {fp32_calib:.2f} %.\n")
    lines += notes
    write_report("\n".join(lines) + "\n", args.out)


def _earlier(int8: Path, args: argparse.Namespace) -> tuple[dict | None, float]:
    """The bisection a previous run of this script made on the same file and settings."""
    saved = int8.parent / "debug" / "bisect_settings.json"
    if not saved.is_file():
        return None, 0.0
    chosen = json.loads(saved.read_text())
    same = (chosen.get("images") == args.bisect_images
            and f"<= {args.max_drop} pt" in chosen.get("goal", ""))  # fmt: skip
    return (chosen, chosen["seconds"]) if same else (None, 0.0)


if __name__ == "__main__":
    main()
