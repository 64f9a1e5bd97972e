"""Every registered target's int8 on the real EfficientNet-Lite0, from one CalibrationTable.

Calibrates once (percentile 99.99 on 512 `imagenet-sample1000` images), exports fp32 and the
target's full-int8 precision for each target from that same table, and scores every file on
`imagenet-val1000` with its own runner (Core ML: Apple's runtime on macOS, the reference
interpreter elsewhere; TensorRT: its QDQ graph run exactly by ONNX Runtime), with lost / won
against the fp32 PyTorch model and McNemar's exact p.

    .venv/bin/python benchmarks/targets_lite0.py [--targets onnx tensorrt tflite coreml]
        [--limit 1000] [--work runs/targets-lite0] [--out reports/targets_lite0.md]

``--targets`` also takes variants of a target with its own options: ``executorch-coreml``
(ExecuTorch lowered to the Core ML delegate), ``tflite-maxdrop`` and ``coreml-maxdrop``
(``--max-drop 0.3``: the ops to keep in float chosen on the calibration images).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from report_file import command_line, write_report  # noqa: E402  (benchmarks/ folder)

from edgevt import api
from edgevt.data.imagenet import default_data_root
from edgevt.targets import all_targets

REPO = Path(__file__).resolve().parent.parent
MODEL = "efficientnet_lite0"
# a row name -> (target, its export options)
VARIANTS = {
    "executorch-coreml": ("executorch", {"delegate": "coreml"}),
    # --max-drop 0.3: the float ops chosen in QuantSim with the target's rules
    "tflite-maxdrop": ("tflite", {"max_drop": 0.3}),
    "coreml-maxdrop": ("coreml", {"max_drop": 0.3}),
}


def _rows() -> list[str]:
    return [*all_targets(), *VARIANTS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=list(all_targets()), choices=_rows())
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--calib-size", type=int, default=512)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "targets-lite0")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "targets_lite0.md")
    args = parser.parse_args()
    root = default_data_root()
    table = args.work / "calibration.json"
    if not table.is_file():
        api.calibrate(MODEL, pretrained=True, data=root / "imagenet-sample1000",
                      calib_size=args.calib_size, out=table)  # fmt: skip
    rows = []
    for name in args.targets:
        start = time.perf_counter()
        target, options = VARIANTS.get(name, (name, {}))
        out = api.export(
            MODEL, target, pretrained=True, out=args.work / name, int8=True, calib_table=table,
            calib=root / "imagenet-sample1000", calib_size=args.calib_size,
            eval_data=root / "imagenet-val1000", limit=args.limit, **options,
        )  # fmt: skip
        ref = out.evals["pytorch_fp32"]
        for artifact in out.artifacts:
            e = out.evals[artifact.path.name]
            vs = e["vs_pytorch_fp32"]
            rows.append((name, artifact.path.name, artifact.precision, e["top1"],
                         e["top1"] - ref["top1"], vs["lost"], vs["won"], vs["p_value"],
                         vs["cosine"], e["n"]))  # fmt: skip
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    lines = [
        f"# Every target's int8 on the real {MODEL}, from one table",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}; table: percentile "
        f"99.99 on {args.calib_size} imagenet-sample1000 images; evaluation: "
        f"imagenet-val1000 ({args.limit} images). PyTorch fp32 (unfused): top-1 "
        f"{ref['top1']:.2f} %.",
        "",
        "| target | file | precision | top-1 % | Δ vs PyTorch fp32 | lost / won (p) "
        "| cosine vs fp32 | images |",
        "|---|---|---|--:|--:|---|--:|--:|",
    ]
    measured = {t: [] for t in _rows()}
    for t, f, p, top1, delta, lost, won, pv, cos, n in rows:
        measured[t].append(f"| {t} | `{f}` | {p} | {top1:.2f} | {delta:+.2f} | {lost} / {won} "
                           f"(p={pv:.2g}) | {cos:.5f} | {n} |")  # fmt: skip
    kept = _earlier_rows(args.out, set(args.targets))
    for t in measured:
        lines += measured[t] or kept.get(t, [])
    if kept:
        lines += ["", f"Rows of {', '.join(sorted(kept))}: the earlier run of this script (same "
                  "table, same images); this run measured "
                  f"{', '.join(args.targets)}."]  # fmt: skip
    write_report("\n".join(lines) + "\n", args.out)


def _earlier_rows(report: Path, rerun: set[str]) -> dict[str, list[str]]:
    """The table rows an earlier run wrote for targets this run does not measure."""
    if not report.is_file():
        return {}
    kept: dict[str, list[str]] = {}
    for line in report.read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 2 and cells[1] in _rows() and cells[1] not in rerun:
            kept.setdefault(cells[1], []).append(line)
    return kept


if __name__ == "__main__":
    main()
