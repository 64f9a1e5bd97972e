"""`edgevt bench`: host latency of artifacts, each timed in its own process."""

from __future__ import annotations

import argparse

from edgevt.cli.common import add_json, count, given, number, print_json, short


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="host latency of artifacts: p50/p90/p99, throughput, memory, size",
        description="Time artifacts with the same runners as `edgevt eval`: warm-up, then "
        "single inferences until --seconds and --iterations are both reached. Results go to "
        "bench/*.json in each artifact's run directory (or -o DIR); the first artifact is the "
        "baseline for the speed-up column.",
    )
    p.add_argument(
        "artifacts", nargs="+", metavar="ARTIFACT", help="exported artifacts or fused.pt files"
    )
    p.add_argument("--threads", type=count(1), nargs="+", help="thread counts to time (default 1)")
    p.add_argument("--batch", type=count(1), help="images per inference (default 1)")
    p.add_argument("--warmup", type=count(0), help="untimed inferences first (default 10)")
    p.add_argument("--seconds", type=number(0), help="time each artifact at least this long (3)")
    p.add_argument("--iterations", type=count(1), help="and at least this often (20)")
    p.add_argument("-o", "--out", metavar="DIR", help="write results here instead")
    add_json(p)
    p.set_defaults(func=bench)


def bench(args: argparse.Namespace) -> None:
    from pathlib import Path

    from edgevt import api

    results = api.bench(
        [Path(a) for a in args.artifacts], out=args.out,
        **given(args, "threads", "batch", "warmup", "seconds", "iterations"),
    )  # fmt: skip
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
        name = short(r.runner.get("artifact", r.runner.get("model", "?")), 33)
        print(
            f"{name:<34}{r.runner.get('precision', '?'):>10}{thr!s:>4}{r.batch:>6}"
            f"{r.p50_ms:>9.2f}{r.p90_ms:>9.2f}{r.p99_ms:>9.2f}{r.throughput_ips:>8.1f}"
            f"{mem:>8}{size:>8}{base[thr] / r.p50_ms:>8.2f}x"
        )
    print("results: " + ", ".join(str(p) for _, p in results))
    if args.json:
        print_json([r.to_dict() for r, _ in results])
