"""int8 PTQ in ONNX Runtime: accuracy and latency of fp32 vs int8, in one run.

For each model: calibrate on imagenet-sample1000, export fp32 and int8 (edgevt's defaults, the
`onnx` target), then on imagenet-val1000 measure top-1 (real checkpoint) or logit cosine and
top-1 agreement against fp32 (random weights), and batch-1 latency at 1 and 2 threads with the
two models timed in interleaved rounds.

    .venv/bin/python benchmarks/int8_ptq.py [--models efficientnet_lite0 levit_128s cvt_13]
        [--calib-size 512] [--method percentile] [--limit 1000] [--out reports/int8_ptq.md]

The table is printed and written (Markdown, with the command and machine) to ``--out``.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import numpy as np
from report_file import command_line, write_report  # noqa: E402

from edgevt import api
from edgevt.data.imagenet import default_data_root, open_dataset
from edgevt.models import get_entry
from edgevt.targets.onnx import OnnxRuntimeRunner
from edgevt.timing import median_ms_loaded_in_turn, runner_turn
from edgevt.validate.evaluate import compare_logits

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["efficientnet_lite0", "levit_128s", "cvt_13"]
    )
    parser.add_argument("--calib-size", type=int, default=512)
    parser.add_argument("--method", default="percentile")
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "int8_ptq.md")
    args = parser.parse_args()
    root = default_data_root()
    rows = []
    for name in args.models:
        pretrained = get_entry(name).pretrained_path is not None
        with tempfile.TemporaryDirectory() as tmp:
            out = api.export(
                name,
                "onnx",
                pretrained=pretrained,
                out=Path(tmp) / name,
                int8=True,
                calib=root / "imagenet-sample1000",
                calib_size=args.calib_size,
                method=args.method,
                progress=False,
            )
            fp32, int8 = out.artifact, out.int8.path
            dataset = open_dataset(root / "imagenet-val1000").subset(args.limit)
            logits, labels = {}, None
            for key, path in (("fp32", fp32), ("int8", int8)):
                with OnnxRuntimeRunner(path, threads=2) as runner:
                    chunks, ys = [], []
                    for images, y in dataset.batches(runner.info.preprocess, 50):
                        chunks.append(runner.infer(images))
                        ys.append(y)
                logits[key], labels = np.concatenate(chunks), np.concatenate(ys)
            top1 = {k: 100 * float((v.argmax(1) == labels).mean()) for k, v in logits.items()}
            agree = compare_logits(logits["fp32"], logits["int8"])
            sample = next(dataset.batches(get_entry(name).preprocess, 1))[0]
            for threads in args.threads:
                ms = median_ms_loaded_in_turn(
                    {
                        k: runner_turn(lambda p=p, t=threads: OnnxRuntimeRunner(p, t), sample)
                        for k, p in (("fp32", fp32), ("int8", int8))
                    },
                    args.rounds,
                    args.iters,
                )
                rows.append(
                    (
                        name,
                        "real" if pretrained else "random",
                        threads,
                        ms["fp32"],
                        ms["int8"],
                        top1,
                        agree,
                    )
                )
    lines = [
        f"int8 PTQ ({args.method}, {args.calib_size} calibration images from imagenet-sample1000),"
        f" ONNX Runtime, batch 1, imagenet-val1000 ({args.limit} images)",
        "",
        "| model | weights | threads | fp32 ms | int8 ms | speed-up | top-1 fp32 | top-1 int8 "
        "| cosine | top-1 agreement |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, weights, threads, f, q, top1, agree in rows:
        lines.append(
            f"| {name} | {weights} | {threads} | {f:.2f} | {q:.2f} | {f / q:.2f}x "
            f"| {top1['fp32']:.2f} | {top1['int8']:.2f} | {agree['cosine']:.5f} "
            f"| {agree['top1_agreement']:.3f} |"
        )
    lines += [
        "",
        "Top-1 of random-weight models is against real labels and means nothing; their cosine and",
        "agreement (int8 vs fp32 logits) are the measure.",
        "",
        f"Command: `{command_line()}`; "
        f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"onnxruntime {ort_version()}.",
    ]
    text = "\n".join(lines) + "\n"
    write_report(text, args.out)


def ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    main()
