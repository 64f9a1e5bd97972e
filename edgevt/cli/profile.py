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
        "same profile for its default --optimize balanced. Targets: tflite. With --emulate "
        "DEVICE: instead count the aarch64 instructions one inference of each of the run's "
        "files executes on the device's core under qemu (an ARM cost estimate, not a time).",
        88),
        epilog="examples:\n  edgevt profile runs/levit-tflite/model_int8.tflite --threads 1 2\n"
        "  edgevt profile runs/levit-tflite --emulate raspberry-pi-5    # cortex-a76",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("artifact", metavar="ARTIFACT", help="an int8 file of a run, or the run")
    p.add_argument("--threads", type=count(1), nargs="+",
                   help="thread counts to time (default 1 2; recipes use the largest)")
    p.add_argument("-o", "--out", metavar="FILE", help="write the profile here instead")
    p.add_argument(
        "--emulate", metavar="DEVICE",
        help="count aarch64 instructions per inference of the run's files (or the one given) "
        "on DEVICE's core under qemu-aarch64, 1 thread; writes instructions_<device>_<core>.json "
        "in the run (needs qemu-user and gcc; the first run downloads Debian arm64 Python)",
    )  # fmt: skip
    p.add_argument("--core", help="with --emulate: the ARM core (default: the profile's)")
    p.add_argument(
        "--op-types", action="store_true",
        help="with --emulate: the op-type profile instead, counted on the device's core (one "
        "int8 file per op type in float): the recipes `edgevt export --profile-on DEVICE` "
        "chooses; writes op_profile_<target>_<device>_<core>.json",
    )  # fmt: skip
    add_json(p)
    p.set_defaults(func=profile)


def profile(args: argparse.Namespace) -> None:
    from edgevt import api
    from edgevt.errors import EdgevtError
    from edgevt.op_profile import OPTIMIZE, choose

    if args.op_types and not args.emulate:
        raise EdgevtError("--op-types applies with --emulate DEVICE (the host profile is the "
                          "op-type profile already).")  # fmt: skip
    if (args.emulate or args.core) and not args.op_types:
        return emulate(args)
    if args.emulate and args.threads:
        raise EdgevtError("--threads applies to the host profile; --emulate counts at 1 thread.")

    measured, written = api.profile(args.artifact, threads=args.threads, out=args.out,
                                    progress=not args.json, device=args.emulate,
                                    core=args.core)  # fmt: skip
    threads = measured.threads
    base, unit = measured.base, measured.unit
    short = "ms" if unit == "ms" else "M ins"
    print(f"{measured.model} on {measured.target}, {measured.host}"
          + ("" if unit == "ms" else " (instructions per inference, not a time)"))  # fmt: skip
    head = f"{'variant':<32}{'cosine':>9}" + "".join(f"{f'{short} {t}T':>10}" for t in threads)
    print(head + f"{f'int8 cost {base}T':>16}")
    rows = [(v.label, v) for v in [measured.fp32, measured.full, *measured.types]]
    rows += [(f"int8, group {i} float", g) for i, g in enumerate(measured.groups, 1)]
    for label, v in rows:
        cost = (measured.cost(v.float_types[0]) if len(v.float_types) == 1
                else measured.full.ms[base] - v.ms[base] if v.float_types else None)  # fmt: skip
        cost = "" if cost is None else f"{cost:+.2f} {short}"
        print(f"{label:<32}{v.cosine:>9.5f}" + "".join(f"{v.ms[t]:>10.2f}" for t in threads)
              + f"{cost:>16}")  # fmt: skip
    for i, g in enumerate(measured.groups, 1):
        print(f"group {i}: {' '.join(g.float_types)} in float ({g.partitions} XNNPACK "
              f"partitions; full int8: {measured.full.partitions}; {g.label})")
    print("int8 cost: full int8 minus the file with that type in float (positive: the type is "
          "slower in int8 here)")  # fmt: skip
    recipes = {mode: choose(measured, mode) for mode in OPTIMIZE}
    for mode, types in recipes.items():
        print(f"--optimize {mode:<9} float: {' '.join(types) or '(none: every op int8)'}")
    print(f"profile: {written}")
    if args.json:
        print_json({**measured.to_dict(), "recipes": recipes, "file": str(written)})


def emulate(args: argparse.Namespace) -> None:
    from edgevt.aarch64 import instruction_profile
    from edgevt.errors import EdgevtError

    if not args.emulate:
        raise EdgevtError("--core applies with --emulate DEVICE.")
    if args.threads or args.out:
        raise EdgevtError("--threads and -o apply to the host profile, not --emulate (1 thread, "
                          "written into the run).")  # fmt: skip
    data, written = instruction_profile(args.artifact, args.emulate, args.core,
                                        progress=not args.json)  # fmt: skip
    print(f"{data['device']}: emulated {data['core']}, 1 thread (instructions per inference, "
          "not a time)")  # fmt: skip
    for name, entry in data["files"].items():
        print(f"  {name:<28}{entry['precision']:<8}{entry['instructions'] / 1e6:>10.1f} M")
    print(f"written: {written}")
    if args.json:
        print_json({**data, "file": str(written)})
