"""`edgevt profile`: what each op type of an int8 file costs in int8 on this host."""

from __future__ import annotations

import argparse
import textwrap

from edgevt.cli.common import add_json, count, print_json


def add_parser(sub) -> None:
    p = sub.add_parser(
        "profile",
        help="what each op type costs in int8 vs float on this host, and the recipes from it",
        description=textwrap.fill(
        "Measure, for a run's int8 file, what each op type costs by running in int8 instead"
        " of float on this host: one int8 file per op type with that type kept in "
        "float, timed beside fp32 and full int8 (batch 1, interleaved rounds), each scored by "
        "its logit cosine to fp32 on 16 calibration images. Prints the table and the float op "
        "types each `edgevt export --optimize` mode would choose; writes "
        "op_profile_<target>.json in the run (or -o FILE). `edgevt export --int8` runs the "
        "same profile for its default --optimize balanced. Targets: tflite.", 88),
        epilog="example:\n  edgevt profile runs/levit-tflite/model_int8.tflite --threads 1 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("artifact", metavar="ARTIFACT", help="an int8 file of a run, or the run")
    p.add_argument("--threads", type=count(1), nargs="+",
                   help="thread counts to time (default 1 2; recipes use the largest)")
    p.add_argument("-o", "--out", metavar="FILE", help="write the profile here instead")
    add_json(p)
    p.set_defaults(func=profile)


def profile(args: argparse.Namespace) -> None:
    from edgevt import api
    from edgevt.op_profile import OPTIMIZE, choose

    measured, written = api.profile(args.artifact, threads=args.threads, out=args.out,
                                    progress=not args.json)  # fmt: skip
    threads = measured.threads
    base = measured.base
    print(f"{measured.model} on {measured.target}, {measured.host}")
    head = f"{'variant':<32}{'cosine':>9}" + "".join(f"{f'ms {t}T':>9}" for t in threads)
    print(head + f"{f'int8 cost {base}T':>16}")
    for v in [measured.fp32, measured.full, *measured.types]:
        cost = f"{measured.cost(v.float_types[0]):+.2f} ms" if v.float_types else ""
        print(f"{v.label:<32}{v.cosine:>9.5f}" + "".join(f"{v.ms[t]:>9.2f}" for t in threads)
              + f"{cost:>16}")  # fmt: skip
    print("int8 cost: full int8 minus the file with that type in float (positive: the type is "
          "slower in int8 here)")  # fmt: skip
    recipes = {mode: choose(measured, mode) for mode in OPTIMIZE}
    for mode, types in recipes.items():
        print(f"--optimize {mode:<9} float: {' '.join(types) or '(none: every op int8)'}")
    print(f"profile: {written}")
    if args.json:
        print_json({**measured.to_dict(), "recipes": recipes, "file": str(written)})
