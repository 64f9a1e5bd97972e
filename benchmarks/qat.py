"""PTQ vs QAT int8, side by side: top-1 on real ImageNet images per target.

Exports the PTQ model (the zoo checkpoint + the PTQ table) and the QAT result of `edgevt qat`
(its fused.pt + learned table) through the same targets with the same quantization config,
evaluates every artifact on the same images, and prints (and with --out writes) one table:

    edgevt calibrate efficientnet_lite0 --pretrained --data ../shared/data/imagenet-sample1000 \\
        -o calib/lite0.json
    edgevt qat efficientnet_lite0 --pretrained --data ../shared/data/imagenet-sample1000 \\
        --calib-table calib/lite0.json --steps 300 -o runs/lite0-qat
    .venv/bin/python benchmarks/qat.py efficientnet_lite0 --pretrained \\
        --ptq-table calib/lite0.json --qat-run runs/lite0-qat --targets onnx tflite \\
        --out reports/qat_lite0.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgevt import api
from edgevt.data.imagenet import default_data_root


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model")
    p.add_argument("--checkpoint")
    p.add_argument("--pretrained", action="store_true")
    p.add_argument("--ptq-table", required=True)
    p.add_argument("--qat-run", required=True, help="run directory of `edgevt qat`")
    p.add_argument("--quant-config", help="the config both were made with")
    p.add_argument("--targets", nargs="+", default=["onnx", "tflite"])
    p.add_argument("--data", default=str(default_data_root() / "imagenet-val1000"))
    p.add_argument("--limit", type=int)
    p.add_argument("--work", default="runs/bench-qat", help="where the exports go")
    p.add_argument("--out", help="also write the table as Markdown here")
    args = p.parse_args()
    qat_run = Path(args.qat_run)
    from edgevt.validate.evaluate import compare_logits
    from edgevt.validate.significance import describe, paired_top1

    # One fp32 reference for every row: the original model (QAT's own float weights moved).
    ref = api.evaluate(args.model, args.data, args.checkpoint, pretrained=args.pretrained,
                       limit=args.limit)  # fmt: skip
    rows = []
    for target in args.targets:
        for label, checkpoint, pretrained, table in (
            ("PTQ", args.checkpoint, args.pretrained, args.ptq_table),
            ("QAT", qat_run / "fused.pt", False, qat_run / "calibration.json"),
        ):
            precision = {"precisions": ["int8"]} if target in ("tflite", "coreml") else {}
            outcome = api.export(
                args.model, target, str(checkpoint) if checkpoint else None,
                pretrained=pretrained, out=Path(args.work) / f"{label.lower()}-{target}",
                int8=True, calib_table=table, quant_config=args.quant_config, **precision,
            )  # fmt: skip
            int8 = outcome.int8.path.name
            result = api.evaluate(outcome.run_dir / int8, args.data, limit=args.limit)
            agree = compare_logits(ref.logits, result.logits)
            rows.append({"model": label, "target": target, "artifact": int8,
                         "top1_fp32": ref.top1, "top1_int8": result.top1,
                         "top5_int8": result.top5, "cosine": agree["cosine"],
                         "agreement": agree["top1_agreement"], "logits": result.logits,
                         **paired_top1(ref.labels, ref.logits, result.logits)})  # fmt: skip
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "logits"}),
                  file=sys.stderr)  # fmt: skip
    qat_log = json.loads((qat_run / "qat.json").read_text())
    lines = [
        f"# PTQ vs QAT int8: {args.model}",
        "",
        f"`.venv/bin/python benchmarks/qat.py {' '.join(sys.argv[1:])}`",
        "",
        f"QAT settings: {json.dumps(qat_log['settings'])}",
        f"edgevt commit: {commit()}",
        f"Quantization config: {args.quant_config or 'edgevt default'}. Evaluation: {args.data}"
        f"{f' (first {args.limit})' if args.limit else ''}; fp32 = PyTorch fp32 of the original "
        f"model ({ref.top1:.2f} % top-1); cosine and agreement are against its logits. lost / won: "
        "images fp32 gets right and int8 wrong / fp32 wrong and int8 right (Δ = won − lost); "
        "p: McNemar's exact test of that split (p >= 0.05: within the noise of this subset).",
        "",
        "| model | target | top-1 fp32 | top-1 int8 | Δ | lost / won (p) | top-5 int8 | cosine "
        "| agreement |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        delta = r["top1_int8"] - r["top1_fp32"]
        lines.append(
            f"| {r['model']} | {r['target']} | {r['top1_fp32']:.2f} | {r['top1_int8']:.2f} | "
            f"{delta:+.2f} | {r['lost']} / {r['won']} (p={r['p_value']:.2g}) | "
            f"{r['top5_int8']:.2f} | {r['cosine']:.5f} | {r['agreement']:.3f} |"
        )
    lines += ["", "QAT against PTQ on the same images (lost: PTQ right, QAT wrong; won: the "
              "reverse; McNemar's exact test):", ""]  # fmt: skip
    for target in args.targets:
        ptq, qat = (next(r for r in rows if r["model"] == m and r["target"] == target)
                    for m in ("PTQ", "QAT"))  # fmt: skip
        paired = paired_top1(ref.labels, ptq["logits"], qat["logits"])
        lines.append(f"- {target}: QAT {qat['top1_int8'] - ptq['top1_int8']:+.2f} pt vs PTQ, "
                     f"{describe(paired['lost'], paired['won'], paired['p_value'])}")  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


def commit() -> str:
    """The checkout's commit (``+changes`` when ``edgevt/`` differs from it): QAT numbers
    depend on the code that trained them."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()  # fmt: skip

    sha = git("rev-parse", "--short", "HEAD")
    changed = git("status", "--porcelain", "--", "../edgevt")
    return (sha + ("+changes" if changed else "")) if sha else "unknown"


if __name__ == "__main__":
    sys.exit(main())
