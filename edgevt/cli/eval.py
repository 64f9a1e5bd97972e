"""`edgevt eval`: top-1/top-5 of a zoo model or an artifact on labelled ImageNet images."""

from __future__ import annotations

import argparse

from edgevt.cli.common import add_json, add_weights, count, given, note_random, print_json


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="top-1/top-5 of a zoo model or an artifact on ImageNet images")
    p.add_argument(
        "target",
        metavar="MODEL_OR_ARTIFACT",
        help="zoo name, exported artifact (.onnx, .tflite, .mlpackage) or fused.pt",
    )
    p.add_argument(
        "--data",
        metavar="DIR",
        required=True,
        help="ImageFolder (DIR/<wnid>/*.JPEG) or flat folder with a ground-truth file",
    )
    p.add_argument("--labels", metavar="FILE", help="ground-truth file for a flat folder")
    add_weights(p)
    p.add_argument("--fused", action="store_true", help="fuse a zoo model before evaluating")
    p.add_argument("--limit", type=count(1), help="evaluate at most N images (class-interleaved)")
    p.add_argument("--batch-size", type=count(1), help="images per inference (default 32)")
    p.add_argument(
        "--threads",
        type=count(1),
        help="inference threads (default: the runtime's; with --workers, cores / workers each)",
    )
    p.add_argument(
        "--workers",
        type=count(1),
        default=1,
        help="split the images over N local processes, each loading the model once; the "
        "result equals one process's exactly (default 1)",
    )
    add_json(p)
    p.set_defaults(func=evaluate)


def evaluate(args: argparse.Namespace) -> None:
    from edgevt import api

    result = api.evaluate(
        args.target, args.data, labels=args.labels, limit=args.limit, fused=args.fused,
        workers=args.workers,
        **given(args, "checkpoint", "pretrained", "batch_size", "threads", "seed"),
    )  # fmt: skip
    note_random(result.runner.get("weights", ""))
    print(
        f"{result.runner['model']} ({result.runner['backend']}, {result.runner['precision']}): "
        f"top-1 {result.top1:.2f} %  top-5 {result.top5:.2f} %  on {result.n} images "
        f"from {result.data} ({result.seconds:.1f} s)"
    )
    if args.json:
        print_json(result.to_dict())
