"""`edgevt debug`: per-tensor truth for an int8 artifact (see ``edgevt.debug``)."""

from __future__ import annotations

import argparse

from edgevt.cli.common import add_json, count, given, number, print_json


def add_parser(sub) -> None:
    p = sub.add_parser(
        "debug",
        help="per-tensor error of an int8 artifact vs fp32 and vs edgevt's simulation",
        description="Run an int8 artifact, its fp32 fused model and edgevt's simulation of its "
        "target's int8 rules on the same images, and compare them tensor by tensor at the "
        "calibration table's names: SQNR against fp32 along the depth, how much of each int8 "
        "grid the values use and how many are clipped, whether weights or activations dominate "
        "each layer's error, and every tensor where the file departs from the simulation "
        "(cosine < 0.9999). Reads int8 files of the onnx and tensorrt targets (QDQ ONNX, in "
        "ONNX Runtime without fusions), tflite (LiteRT's built-in kernels, every tensor kept) "
        "and coreml (w8a8 packages, in edgevt's MIL interpreter). Writes "
        "RUN/debug/ARTIFACT.json and .html.",
        epilog="examples:\n  edgevt debug runs/lite0/model_int8.onnx "
        "--data ../shared/data/imagenet-sample1000 --limit 32\n"
        "  edgevt debug runs/lite0-tflite/model_int8.tflite "
        "--data ../shared/data/imagenet-sample1000 --max-drop 0.5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("artifact", metavar="ARTIFACT",
                   help="an int8 .onnx, .tflite or w8a8 .mlpackage inside its run directory")
    p.add_argument(
        "--data", required=True, metavar="DIR",
        help="images to run (labels not needed; use calibration images, not your test set)",
    )  # fmt: skip
    p.add_argument("--limit", type=count(1), help="images to compare (default 32)")
    p.add_argument(
        "--reference", metavar="FUSED_PT",
        help="the fp32 fused model (default: fused.pt beside the artifact)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=count(1), help="images per step (default 4; bounds memory)")
    p.add_argument("--threads", type=count(1), help="threads of the file's runtime")
    goal = p.add_argument_group(
        "bisect: a small float set that reaches a goal, verified on exported files, written as "
        "ARTIFACT.float.json for `edgevt export --quant-config`"
    )
    goal.add_argument("--max-drop", type=number(0, inclusive=True), metavar="PT",
                      help="top-1 drop budget in points (vs labels; without labels, "
                      "disagreement with fp32)")  # fmt: skip
    goal.add_argument("--fix-to", type=number(0), metavar="COSINE",
                      help="logits cosine to fp32 to reach, e.g. 0.999")  # fmt: skip
    goal.add_argument("--bisect-images", type=count(1), metavar="N",
                      help="images the goal is measured on (default 256)")  # fmt: skip
    p.add_argument("-o", "--out", metavar="DIR", help="write the JSON here (default RUN/debug/)")
    add_json(p)
    p.set_defaults(func=debug)


def debug(args: argparse.Namespace) -> None:
    from edgevt.debug import debug as run_debug
    from edgevt.debug import format_table

    result, path = run_debug(
        args.artifact, args.data, out=args.out,
        **given(args, "limit", "reference", "batch_size", "threads", "max_drop", "fix_to",
                "bisect_images"),
    )  # fmt: skip
    print(f"{result.model} {result.target} int8 on {result.images} images")
    print(format_table(result))
    print(f"results: {path}")
    if args.json:
        print_json(result.to_dict())
