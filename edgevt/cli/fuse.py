"""`edgevt fuse` and `edgevt calibrate`: the stages before export."""

from __future__ import annotations

import argparse

from edgevt.cli.common import add_calibration, add_json, add_weights, given, note_random, print_json

WEIGHTS = ("checkpoint", "pretrained", "seed")


def add_parsers(sub) -> None:
    p = sub.add_parser("fuse", help="fold BatchNorm, merge heads, precompute biases; verify")
    p.add_argument("model", help="zoo name (see `edgevt models`)")
    add_weights(p)
    p.add_argument(
        "--data",
        metavar="DIR",
        help="images to verify numerics on (default: "
        "$EDGEVT_DATA/imagenet-sample1000, else random inputs)",
    )
    p.add_argument("-o", "--out", metavar="RUN_DIR", help="write fused.pt, fuse.json, manifest")
    add_json(p)
    p.set_defaults(func=fuse)

    p = sub.add_parser(
        "calibrate",
        help="measure activation ranges on images: the CalibrationTable every target honours",
    )
    p.add_argument("model", help="zoo name (see `edgevt models`)")
    add_weights(p)
    p.add_argument(
        "--data",
        metavar="DIR",
        required=True,
        help="calibration images: any folder of images, labels not needed "
        "(keep it disjoint from the evaluation set, e.g. imagenet-sample1000)",
    )
    add_calibration(p)
    p.add_argument("-o", "--out", metavar="TABLE.json", required=True, help="table to write")
    add_json(p)
    p.set_defaults(func=calibrate)


def fuse(args: argparse.Namespace) -> None:
    from edgevt import api

    outcome = api.fuse(args.model, data=args.data, out=args.out, **given(args, *WEIGHTS))
    note_random(outcome.loaded.weights)
    r = outcome.report
    print(
        f"fused {args.model}: {r.batchnorm_before} BatchNorm -> {r.batchnorm_after}; "
        + ", ".join(f"{k} x{v}" for k, v in r.rewrites.items() if v)
    )
    print(f"max |logit diff| {r.max_abs_diff:.3g} on {r.inputs} (allowed {r.tolerance:.3g})")
    if outcome.run_dir:
        print(f"wrote {outcome.run_dir.path / api.FUSED_FILE}")
    if args.json:
        print_json(r.to_dict())


def calibrate(args: argparse.Namespace) -> None:
    from edgevt import api

    table = api.calibrate(
        args.model, data=args.data, out=args.out,
        **given(args, *WEIGHTS, "calib_size", "method"),
    )  # fmt: skip
    note_random(table.weights)
    ops = table.ops
    print(
        f"calibrated {args.model} ({table.method}) on {table.images} images in "
        f"{table.seconds} s: {len(table.activations)} activation ranges over "
        f"{len(ops)} ops ({sum(t == 'matmul' for t in ops.values())} matmul products)"
    )
    print(f"wrote {args.out}")
    if args.json:
        print_json({"table": args.out, "method": table.method, "ops": len(ops)})
