"""`edgevt export` (fuse, export to a target, check, evaluate) and `edgevt check`."""

from __future__ import annotations

import argparse

from edgevt.cli.common import (
    add_calibration,
    add_json,
    add_weights,
    count,
    given,
    note_random,
    number,
    print_json,
)

NOTES_SHOWN = 8  # "not honoured" lines printed by export; all of them are in the manifest


def add_parsers(sub) -> None:
    from edgevt.targets import DEFAULT_TARGET, all_targets

    targets = all_targets()
    p = sub.add_parser(
        "export",
        help="fuse and export a model to a target",
        description="Fuse MODEL, export it to --target in fp32 and every precision asked for, "
        "check each file against the fused PyTorch model, and (with --eval-data) measure "
        "top-1/top-5 of each. Everything lands in one run directory with a manifest.",
    )
    p.add_argument("model", help="zoo name (see `edgevt models`)")
    p.add_argument("--target", choices=list(targets),
                   help=f"export target (default {DEFAULT_TARGET}; see `edgevt targets`)")
    add_weights(p)
    p.add_argument("-o", "--out", metavar="RUN_DIR", help="run directory (default runs/MODEL)")
    p.add_argument("--data", metavar="DIR", help="images for the fusion/export checks")
    p.add_argument(
        "--eval-data",
        metavar="DIR",
        help="labelled images: also measure top-1/top-5 of PyTorch fp32 and the "
        "artifact, written to eval.json",
    )
    p.add_argument("--limit", type=count(1), help="evaluate at most N images")
    p.add_argument(
        "--eval-workers", type=count(1), metavar="N",
        help="evaluate in N local processes (shards of whole batches; the same scores as one)",
    )  # fmt: skip
    p.add_argument(
        "--precision",
        nargs="+",
        default=[],
        metavar="P",
        help="precisions beside fp32, as the target offers them (`edgevt targets`): fp16 and w8 "
        "(weights only) for tflite and coreml; int8 (needs calibration) for every target "
        "(W8A8 on coreml)",
    )
    g = p.add_argument_group("int8")
    g.add_argument("--int8", action="store_true",
                   help="also write the int8 model (= --precision int8)")  # fmt: skip
    g.add_argument("--calib", metavar="DIR", help="calibrate on these images on the way")
    g.add_argument("--calib-table", metavar="FILE", help="reuse a table from `edgevt calibrate`")
    add_calibration(g)
    g.add_argument(
        "--quant-config",
        metavar="FILE",
        help="JSON quantization config (global < op_type < module_name regex; null = float)",
    )
    g.add_argument(
        "--max-drop",
        type=number(0, inclusive=True),
        metavar="PT",
        help="top-1 budget in points: keep the most sensitive ops in float to stay within it",
    )
    g.add_argument(
        "--accept-degraded",
        action="store_true",
        help="keep an artifact whose logits are NaN or below cosine 0.9 to the fused model "
        "(default: such an export is an error and the broken file is removed)",
    )
    for target in targets.values():  # each target's own flags, in a group of its own
        target.add_arguments(p)
    add_json(p)
    p.set_defaults(func=export)

    p = sub.add_parser("check", help="check a QDQ ONNX model against TensorRT's Q/DQ rules")
    p.add_argument("artifact", metavar="MODEL.onnx")
    add_json(p)
    p.set_defaults(func=check)


def _target_options(args: argparse.Namespace) -> dict:
    from edgevt.targets import all_targets

    names = {name for t in all_targets().values() for name, _ in t.cli_options}
    return given(args, *sorted(names))


def export(args: argparse.Namespace) -> None:
    from edgevt import api
    from edgevt.targets import DEFAULT_TARGET

    out = api.export(
        args.model, args.target or DEFAULT_TARGET, out=args.out, data=args.data,
        eval_data=args.eval_data, limit=args.limit, int8=args.int8, calib=args.calib,
        calib_table=args.calib_table, quant_config=args.quant_config, max_drop=args.max_drop,
        precisions=[p for arg in args.precision for p in arg.split(",") if p],
        accept_degraded=args.accept_degraded,
        **given(args, "checkpoint", "pretrained", "seed", "calib_size", "method", "eval_workers"),
        **_target_options(args),
    )  # fmt: skip
    note_random(out.weights)
    target = args.target or DEFAULT_TARGET
    r = out.fuse_report
    print(f"fused: {r.batchnorm_before} BatchNorm folded, max |logit diff| {r.max_abs_diff:.3g}")
    print(
        f"exported {out.artifact} (checked against PyTorch: max |diff| "
        f"{out.check['max_abs_diff']:.3g}, cosine {out.check['cosine']:.6f})"
    )
    for a in out.artifacts[1:]:
        _print_artifact(a)
    for name, e in out.evals.items():
        _print_eval(name, e)
    print(f"run directory: {out.run_dir.path} (manifest.json)")
    if args.json:
        int8 = out.int8
        print_json({
            "artifact": str(out.artifact), "run_dir": str(out.run_dir.path), "fuse": r.to_dict(),
            "check": out.check, "eval": out.evals,
            "artifacts": [a.record(target) for a in out.artifacts],
            "int8": None if int8 is None else int8.record(target),
        })  # fmt: skip


def _print_artifact(a) -> None:
    q = a.quantization
    if q is None:
        print(f"{a.path.name}: vs fused fp32 cosine {a.check['cosine']:.6f}")
    else:
        print(
            f"{a.precision}: {a.path} ({q.summary}; vs fused fp32: cosine "
            f"{a.check['cosine']:.5f}, top-1 agreement {100 * a.check['top1_agreement']:.1f} %)"
        )
        for note in q.not_honoured[:NOTES_SHOWN]:
            print(f"  not honoured: {note}")
        if len(q.not_honoured) > NOTES_SHOWN:
            print(f"  ... and {len(q.not_honoured) - NOTES_SHOWN} more (manifest.json of the run)")
    for note in a.notes:
        print(note)


def _print_eval(name: str, e: dict) -> None:
    extra = ""
    if "vs_pytorch_fp32" in e:
        vs = e["vs_pytorch_fp32"]
        extra = f", top-1 agreement with PyTorch {100 * vs['top1_agreement']:.1f} %"
        if "p_value" in vs:
            from edgevt.validate.significance import describe

            extra += f", {describe(vs['lost'], vs['won'], vs['p_value'])}"
    print(f"{name:<16} top-1 {e['top1']:6.2f} %  top-5 {e['top5']:6.2f} %  (n={e['n']}{extra})")


def check(args: argparse.Namespace) -> None:
    from pathlib import Path

    import onnx

    from edgevt.errors import EdgevtError, path_problem
    from edgevt.targets.tensorrt import check_tensorrt_qdq

    path = Path(args.artifact)
    if not path.is_file():
        raise EdgevtError(path_problem(path, "ONNX model") + "; pass an .onnx file.")
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise EdgevtError(
            f"{path} is not a readable ONNX model (corrupt?): {exc} — export it again."
        ) from exc
    if not model.graph.node:
        raise EdgevtError(
            f"{path} holds an empty graph (no nodes): nothing to check — pass the file "
            "`edgevt export` wrote."
        )
    problems = check_tensorrt_qdq(model)
    for p in problems:
        print(f"  {p}")
    verdict = "obeys TensorRT's Q/DQ rules" if not problems else (
        f"{len(problems)} TensorRT Q/DQ rule violation(s)")  # fmt: skip
    print(f"{path}: {verdict}")
    if args.json:
        print_json({"artifact": str(path), "ok": not problems, "problems": problems})
    if problems:
        raise SystemExit(1)
