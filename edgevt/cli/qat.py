"""`edgevt qat`: quantization-aware training from a PTQ table, distilled from fp32."""

from __future__ import annotations

import argparse

from edgevt.cli.common import add_json, add_weights, given, print_json

EPILOG = """example:
  edgevt calibrate efficientnet_lite0 --pretrained --data ../shared/data/imagenet-sample1000 \\
      -o calib/lite0.json
  edgevt qat efficientnet_lite0 --pretrained --data ../shared/data/imagenet-sample1000 \\
      --calib-table calib/lite0.json --steps 300 -o runs/lite0-qat
  edgevt export efficientnet_lite0 --checkpoint runs/lite0-qat/fused.pt --int8 \\
      --calib-table runs/lite0-qat/calibration.json --eval-data ../shared/data/imagenet-val1000"""
SETTINGS = ("checkpoint", "pretrained", "seed", "quant_config", "steps", "epochs", "batch", "lr",
            "lr_unit", "range_lr", "clip_lr", "temperature", "crop_scale", "images",
            "save_every", "device")  # fmt: skip


def add_parser(sub) -> None:
    p = sub.add_parser(
        "qat",
        help="quantization-aware training from a PTQ table, distilled from fp32",
        description="Fine-tune the fused model through its int8 numerics, starting from the "
        "PTQ result (step 0 = what `export --int8 --calib-table` ships), with learnable "
        "activation ranges (and clips of per-tensor weights) and distillation from the fp32 "
        "model. Writes RUN_DIR/fused.pt and RUN_DIR/calibration.json, which every target "
        "exports like PTQ's. Re-running the same command after an interruption resumes from "
        "the last checkpoint.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="zoo name (see `edgevt models`)")
    add_weights(p)
    p.add_argument("--data", metavar="DIR", required=True,
                   help="training images (labels not needed: the fp32 model is the teacher)")
    p.add_argument("--calib-table", metavar="FILE", required=True,
                   help="the PTQ CalibrationTable to start from (`edgevt calibrate`)")
    p.add_argument("--quant-config", metavar="FILE",
                   help="JSON quantization config, as for export (default: edgevt's)")
    p.add_argument("--target",
                   help="whose int8 rules to train through (default onnx: ONNX Runtime; any "
                   "target of `edgevt targets`); train for the target you ship to")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimizer steps (default 300)")
    length.add_argument("--epochs", type=float, help="passes over the training images")
    p.add_argument("--batch", type=int, help="images per step (default 16)")
    p.add_argument("--lr", type=float,
                   help="Adam learning rate of the weights, cosine-decayed (default 5e-6)")
    p.add_argument("--lr-unit", choices=("absolute", "step"),
                   help="absolute (default), or step: --lr counts in each tensor's int8 step "
                   "(max |w| / qmax as the target quantizes it), so wide and fine tensors move "
                   "alike; use it with per-tensor weights, whose steps are too wide for one "
                   "absolute rate (e.g. --lr 3e-3 --lr-unit step; see docs/qat.md)")
    p.add_argument("--range-lr", type=float,
                   help="learning rate of the activation ranges, relative (default 1e-4)")
    p.add_argument("--clip-lr", type=float,
                   help="learning rate of the clips of per-tensor weights, relative to max |w| "
                   "(default 3e-2; 0 keeps PTQ's max |w|); per-channel weights keep max |w|")
    p.add_argument("--temperature", type=float, help="distillation temperature (default 1)")
    p.add_argument("--crop-scale", type=float, metavar="S",
                   help="train on random-resized crops covering at least S of each image, the "
                   "fp32 teacher scoring every crop (e.g. 0.35: more views of few images; "
                   "default 1: whole images and their mirrors)")
    p.add_argument("--images", type=int,
                   help="train on at most N images of --data, held in memory (default 1000)")
    p.add_argument("--save-every", type=int, metavar="N",
                   help="checkpoint every N steps (default 25)")
    p.add_argument("--restart", action="store_true",
                   help="discard the run directory's QAT checkpoint instead of resuming it")
    p.add_argument("--device", help="cuda or cpu (default: the GPU when there is one)")
    p.add_argument("-o", "--out", metavar="RUN_DIR", required=True, help="run directory")
    add_json(p)
    p.set_defaults(func=qat)


def qat(args: argparse.Namespace) -> None:
    from edgevt import api

    out = api.qat(
        args.model, data=args.data, calib_table=args.calib_table, out=args.out,
        restart=args.restart, **given(args, *SETTINGS, "target"),
    )  # fmt: skip
    s = out.summary
    print(
        f"QAT {args.model}: {out.steps} steps ({s['quantized_tensors']} activation tensors, "
        f"{s['quantized_weights']} weights in int8); distillation loss {s['loss_first']:.4f} "
        f"-> {s['loss_last25']:.4f} (mean of the last 25 steps), top-1 agreement with fp32 "
        f"{s['agreement_last25']:.3f}"
    )
    print(f"wrote {out.model} and {out.table}")
    config = f" --quant-config {args.quant_config}" if args.quant_config else ""
    print(
        "export it like PTQ, e.g.:\n"
        f"  edgevt export {args.model} --checkpoint {out.model} --int8 --calib-table "
        f"{out.table}{config}{f' --target {args.target}' if args.target else ''} --eval-data DIR"
    )
    if args.json:
        print_json({"model": str(out.model), "table": str(out.table), **s})
