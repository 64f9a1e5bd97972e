"""`edgevt bundle`, `edgevt report`, `edgevt run`: what leaves this machine."""

from __future__ import annotations

import argparse

from edgevt.cli.common import count


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "run",
        help="the whole pipeline from a TOML config: calibrate, export, eval, bench, report",
        description="Run calibrate -> export every target -> eval -> bench -> bundles -> report "
        "as CONFIG.toml says (examples in configs/). Stages whose inputs did not change are "
        "skipped; an interrupted run resumes where it stopped.",
    )
    p.add_argument("config", metavar="CONFIG.toml")
    p.add_argument("--force", action="store_true", help="re-run every stage")
    p.set_defaults(func=run)

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
    p.add_argument("--samples", type=count(1), help="sample images to check (default 8)")
    p.add_argument("--data", metavar="DIR", help="sample images (default: imagenet-val1000)")
    p.add_argument("--force", action="store_true", help="replace a non-empty -o folder")
    p.add_argument(
        "--eval-images", type=count(0), default=None, metavar="N",
        help=f"labelled images the device scores each model on (top-1/top-5, lost/won against "
        f"this host image by image; default {EVAL_IMAGES}, 0: none; uint8 crops, ~150 KB each "
        "at 224 px)",
    )  # fmt: skip
    p.add_argument("--eval-data", metavar="DIR",
                   help="where those images come from (default: imagenet-val1000)")
    p.add_argument(
        "--verify-aarch64", action="store_true",
        help="then run the bundle's own runner on emulated ARM (qemu-aarch64, Debian 12 arm64 "
        "Python 3.11, cached under ~/.cache/edgevt) and hold its .tflite/.onnx outputs to this "
        "host's: fp32 cosine >= 0.99999, LiteRT int8 within one output step, ONNX Runtime int8 "
        "cosine >= 0.999 (other int8 kernels on ARM). A check, never a timing",
    )  # fmt: skip
    p.add_argument(
        "--count-instructions", action="store_true",
        help="with --verify-aarch64: also count the aarch64 instructions one inference of each "
        "file executes on the emulated core (1 thread; an ARM cost estimate where XNNPACK's "
        "kernels differ per core, not a time; builds a QEMU plugin, needs gcc)",
    )  # fmt: skip
    p.add_argument(
        "--emulated-accuracy", action="store_true",
        help="with --verify-aarch64: also score the bundle's labelled images (--eval-images) on "
        "the emulated core, each file's top-1 beside this host's (slow: QEMU runs float vector "
        "code an element at a time; a real fp32 Lite0 takes about 2.5 s an image on 2 cores, "
        "int8 0.25-0.7 s)",
    )  # fmt: skip
    p.add_argument(
        "--op-profile", action="store_true",
        help="also carry the run's int8 op-type profile files (.tflite: full int8, one op type "
        "in float per file, the fewest-partitions group) for `run_bundle.py --op-profile` to "
        "time on the device; then `edgevt export ... --int8 --profile-on RESULTS.json` chooses "
        "the recipe from the device's own timings",
    )  # fmt: skip
    p.add_argument("--core", help="the ARM core to emulate (default: the profile's core: "
                   "cortex-a76 for raspberry-pi-5, cortex-x3 for pixel-8; or cortex-a72, "
                   "neoverse-n1)")  # fmt: skip
    p.set_defaults(func=bundle)

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
    p.set_defaults(func=report)


def report(args: argparse.Namespace) -> None:
    from pathlib import Path

    from edgevt.report import collect, write_report

    found = collect([Path(d) for d in args.run_dirs], [Path(f) for f in args.device_results])
    models = sorted({r.model for r in found.rows} | {t.model for t in found.timings})
    title = args.title or f"edgevt report: {', '.join(models)}"
    paths = write_report(found, Path(args.out), title)
    print(
        f"report: {len(found.rows)} accuracy rows, {len(found.timings)} timings -> "
        + ", ".join(str(p) for p in paths.values())
    )


def run(args: argparse.Namespace) -> None:
    from edgevt.pipeline import run_pipeline

    outcome = run_pipeline(args.config, force=args.force)
    print(
        f"run directory: {outcome.out} (ran {len(outcome.ran)} stage(s), skipped "
        f"{len(outcome.skipped)}); report: {outcome.report}"
    )


EVAL_IMAGES = 200  # labelled images a bundle scores on the device by default


def bundle(args: argparse.Namespace) -> None:
    from edgevt.bundle import make_bundle
    from edgevt.cli.common import given
    from edgevt.io import artifact_size

    core = None
    if args.verify_aarch64 or args.core or args.count_instructions or args.emulated_accuracy:
        from edgevt.aarch64 import core_for_device

        core = core_for_device(args.device, args.core)  # before any work: nothing to undo
    eval_images = args.eval_images
    if eval_images is None:  # the default: score on the device where labelled images are here
        from edgevt.data.imagenet import default_data_root

        here = args.eval_data or (default_data_root() / "imagenet-val1000").is_dir()
        eval_images = EVAL_IMAGES if here else 0
    if args.emulated_accuracy and not eval_images:
        from edgevt.errors import EdgevtError

        raise EdgevtError(
            "--emulated-accuracy scores the bundle's labelled images, and it carries none: "
            "give --eval-images N (and --eval-data DIR where imagenet-val1000 is not here)."
        )
    made = make_bundle(args.run_dir, args.device, args.out, data=args.data, force=args.force,
                       eval_images=eval_images, eval_data=args.eval_data,
                       op_profile=args.op_profile, **given(args, "samples"))  # fmt: skip
    print(
        f"bundle for {made.device.name}: {made.path} ({', '.join(made.models)}; "
        f"{made.samples} sample images"
        + (f", {eval_images} labelled images to score" if eval_images else "")
        + f"; {artifact_size(made.path) / 2**20:.1f} MB). Next: see {made.path / 'README.md'}"
    )
    if core is not None:
        _verify_aarch64(made, core, args.count_instructions, args.emulated_accuracy)


def _verify_aarch64(made, core: str, count: bool, score: bool) -> None:
    import os

    from edgevt.aarch64 import count_instructions, verify
    from edgevt.errors import EdgevtError
    from edgevt.io import write_json
    from edgevt.progress import step

    scoring = " and scoring its labelled images (slow under emulation)" if score else ""
    with step(f"running the bundle on emulated aarch64 ({core}){scoring}; the first run "
              "downloads Debian arm64 Python and the runtimes' wheels", True):  # fmt: skip
        result = verify(made.path, core, threads=min(2, os.cpu_count() or 1) if score else 1,
                        score=score)  # fmt: skip
    for c in result.checks:
        print(f"  {c.artifact} ({c.backend}): cosine {c.cosine:.6f}, max |diff| "
              f"{c.max_abs_diff:.3g} [{c.tolerance}] {'ok' if c.passed else 'FAILED'}")  # fmt: skip
        if c.artifact in result.accuracy:
            a = result.accuracy[c.artifact]
            print(f"    top-1 {a['top1']:.2f} % on {a['n']} images on emulated {core} (this "
                  f"host {a['host_top1']:.2f} %; {a['lost']} lost / {a['won']} won, "
                  f"p={a['p_value']:.2g})")  # fmt: skip
    for line in result.not_emulated:
        print(f"  not emulated: {line}")
    verdict = "matches this host" if result.passed else "DIFFERS from this host"
    print(f"emulated aarch64 ({core}): {verdict} ({result.seconds:.0f} s; results "
          f"{result.results}, labelled emulated, never a device timing)")  # fmt: skip
    if count and result.passed:
        with step(f"counting aarch64 instructions per inference on {core}", True):
            counts = count_instructions(made.path, core, [c.artifact for c in result.checks])
        for name, n in counts.items():
            print(f"  {name}: {n / 1e6:.1f} M instructions per inference (emulated {core}, "
                  "1 thread: an instruction count, not a time)")  # fmt: skip
        write_json(made.path / "results" / f"{made.device.name}-instructions-{core}.json",
                   {"core": core, "threads": 1, "instructions_per_inference": counts,
                    "note": "emulated instruction count, not a time"})  # fmt: skip
    if not result.passed:
        raise EdgevtError(
            f"the bundle's files compute differently on emulated aarch64 ({core}) than on this "
            "host (above); do not ship it before finding out why."
        )
