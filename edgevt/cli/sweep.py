"""`edgevt sweep SWEEP.toml`: every model x target x precision x calibration, on Ray."""

from __future__ import annotations

import argparse

EXAMPLE = """\
a sweep file (paths relative to it):
  out = "runs/sweep"
  [[model]]
  name = "efficientnet_lite0"
  pretrained = true
  [[model]]
  name = "levit_128s"
  checkpoint = "LeViT-128S.pth"
  [sweep]
  targets = ["onnx", "tflite"]
  precisions = ["fp32", "int8"]      # int8: each target's own int8
  methods = ["percentile"]            # calibration methods, one table each
  sizes = [512]                       # calibration images
  max_drop = 1.0                      # the leaderboard's accuracy budget (points)
  [calibration]
  data = "../shared/data/imagenet-sample1000"
  [eval]
  data = "../shared/data/imagenet-val1000"
  [bench]
  threads = [1]
  [[devices]]
  name = "raspberry-pi-5"             # runs on a Ray node with resource raspberry-pi-5

join a device to a cluster (on the device, with numpy and its runtime installed):
  ray start --address HEAD:6379 --num-cpus 0 --resources '{"raspberry-pi-5": 1}'
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="models x targets x precisions x calibrations as Ray tasks, one report",
        description="Expand SWEEP.toml into one `edgevt run` config per model and calibration "
        "(written to OUT/<group>/run.toml), run their calibrations, exports, evaluations and "
        "benchmarks as Ray tasks, each device's bundle on a node that advertises that device, "
        "and write OUT/report with a leaderboard. Finished cells are skipped on a re-run; a "
        "failed cell is named and the others go on. Needs `pip install 'edgevt[ray]'`.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweep", metavar="SWEEP.toml")
    p.add_argument(
        "--address",
        metavar="ADDR",
        help="join this Ray cluster (HOST:PORT of `ray start --head`); default: start Ray on "
        "this machine for the sweep",
    )
    p.add_argument("-o", "--out", metavar="DIR", help="output folder (default: the file's out)")
    p.add_argument("--force", action="store_true", help="re-run every cell")
    p.set_defaults(func=sweep)


def sweep(args: argparse.Namespace) -> None:
    from edgevt.errors import EdgevtError
    from edgevt.sweep import run_sweep

    outcome = run_sweep(args.sweep, address=args.address, out=args.out, force=args.force)
    counts = {s: sum(c.status == s for c in outcome.cells)
              for s in ("done", "skipped", "failed", "no node")}  # fmt: skip
    waiting = f", {counts['no node']} waiting for a device node" if counts["no node"] else ""
    print(
        f"sweep: {counts['done']} cell(s) ran, {counts['skipped']} skipped, {counts['failed']} "
        f"failed{waiting}; {outcome.out / 'sweep.json'}; report: {outcome.report}"
    )
    if outcome.failed:
        first = outcome.failed[0]
        raise EdgevtError(
            f"{len(outcome.failed)} cell(s) failed, first {first.label}: {first.error} (its "
            f"log: {first.group.out / 'logs'}); fix it and run the sweep again (finished cells "
            "are skipped)."
        )
