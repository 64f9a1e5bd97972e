"""LiteRT latency of every zoo model in every TFLite precision, with file sizes, in one run.

Per model: edgevt exports fp32, fp16 (weights), w8 (weight-only int8) and full int8 (from one
CalibrationTable, percentile, ``--calib-size`` images of imagenet-sample1000), then times them
with LiteRT/XNNPACK at batch 1 and each ``--threads`` count; the variants of one model run in
interleaved rounds (each loaded only for its turn) so that machine noise hits them alike, and
every ratio is against that model's fp32 file in the same run. Each file is also checked
against the fp32 file on ``--check`` images of imagenet-val1000 (cosine, top-1 agreement).

CvT-W24 (384 px, 277 M parameters) is exported in fp32 and fp16 only by default (``--int8-skip``):
its full-int8 conversion needs more memory and time than the 2-core build machine gives.

    .venv/bin/python benchmarks/tflite_latency.py [--models ...] [--threads 1 2]
        [--out reports/tflite_latency.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from report_file import command_line, cpu_flags, write_report  # noqa: E402

from edgevt import api
from edgevt.data.imagenet import default_data_root, open_dataset
from edgevt.models import get_entry, list_models
from edgevt.targets import artifact_name, get_target
from edgevt.targets.tflite import LiteRTRunner
from edgevt.timing import median_ms_loaded_in_turn, runner_turn
from edgevt.validate.evaluate import compare_logits

REPO = Path(__file__).resolve().parent.parent
PRECISIONS = ("fp32", "fp16", "w8", "int8")


def iters_for(ms_estimate: float, budget_s: float = 0.4) -> int:
    """Iterations per round so that one round of one variant takes about ``budget_s``."""
    return max(2, min(20, int(budget_s * 1e3 / max(ms_estimate, 1e-3))))


def measure(name: str, work: Path, args: argparse.Namespace) -> list[dict]:
    entry = get_entry(name)
    pretrained = entry.pretrained_path is not None
    precisions = [p for p in PRECISIONS if not (p == "int8" and name in args.int8_skip)]
    calib = {"calib": default_data_root() / "imagenet-sample1000", "calib_size": args.calib_size}
    out = api.export(name, "tflite", pretrained=pretrained, out=work / name,
                     precisions=precisions[1:], progress=False,
                     **(calib if "int8" in precisions else {}))  # fmt: skip
    spec = get_target("tflite").spec
    paths = {p: out.run_dir.path / artifact_name(spec, p) for p in precisions}
    images = next(open_dataset(default_data_root() / "imagenet-val1000").subset(args.check)
                  .batches(entry.preprocess, args.check))[0]  # fmt: skip
    logits = {}
    for p, path in paths.items():
        with LiteRTRunner(path, threads=2) as runner:
            logits[p] = runner.infer(images)
    x = images[:1]
    rows = {p: {"model": name, "weights": "real" if pretrained else "random", "precision": p,
                "mb": path.stat().st_size / 2**20,
                **compare_logits(logits["fp32"], logits[p])}
            for p, path in paths.items()}  # fmt: skip
    for threads in args.threads:
        with LiteRTRunner(paths["fp32"], threads=threads) as first:
            first.infer(x)
            start = time.perf_counter()
            first.infer(x)
            iters = iters_for((time.perf_counter() - start) * 1e3)

        loaders = {p: runner_turn(lambda path=path, t=threads: LiteRTRunner(path, threads=t), x)
                   for p, path in paths.items()}  # fmt: skip
        ms = median_ms_loaded_in_turn(loaders, args.rounds, iters)
        for p in paths:
            rows[p][f"ms{threads}"] = ms[p]
            rows[p][f"x{threads}"] = ms["fp32"] / ms[p]
    return list(rows.values())


def render(rows: list[dict], threads: list[int]) -> list[str]:
    head = "| model | weights | precision | MB | cosine vs fp32 | agreement | "
    head += " | ".join(f"p50 ms {t}T | vs fp32 {t}T" for t in threads) + " |"
    lines = [head, "|---|---|---|--:|--:|--:|" + "--:|--:|" * len(threads)]
    for r in rows:
        cells = [r["model"], r["weights"], r["precision"], f"{r['mb']:.1f}",
                 f"{r['cosine']:.5f}", f"{r['top1_agreement']:.3f}"]  # fmt: skip
        for t in threads:
            cells += [f"{r[f'ms{t}']:.2f}", f"{r[f'x{t}']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list_models())
    parser.add_argument("--int8-skip", nargs="*", default=["cvt_w24"],
                        help="models exported without full int8 (default: cvt_w24)")
    parser.add_argument("--calib-size", type=int, default=64)
    parser.add_argument("--check", type=int, default=16, help="val images for the cosine check")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "tflite_latency.md")
    args = parser.parse_args()
    started = time.perf_counter()
    rows: list[dict] = []
    for name in args.models:
        print(f"[{name}] export and time", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            model_rows = measure(name, Path(tmp), args)
        rows += model_rows
        print("\n".join(render(model_rows, args.threads)), flush=True)
    import ai_edge_litert

    text = "\n".join([
        "# LiteRT latency of every zoo model and TFLite precision",
        "",
        f"Batch 1, LiteRT/XNNPACK on this machine's CPU; full int8 from one percentile "
        f"CalibrationTable ({args.calib_size} images of imagenet-sample1000), float32 in/out. "
        "`vs fp32` is the model's fp32 .tflite over the variant, timed in interleaved rounds of "
        f"the same run; cosine and agreement are against the fp32 .tflite on {args.check} images "
        "of imagenet-val1000 (random-weight models: see the README on why their int8 cosine "
        "understates a trained model's). Skipped full int8: "
        f"{', '.join(args.int8_skip) or 'none'}.",
        "",
        *render(rows, args.threads),
        "",
        f"Command: `{command_line()}` "
        f"({(time.perf_counter() - started) / 60:.0f} min); machine: {platform.machine()}, "
        f"{os.cpu_count()} CPUs ({cpu_flags()}), ai-edge-litert "
        f"{getattr(ai_edge_litert, '__version__', '?')}.",
    ])  # fmt: skip
    write_report(text + "\n", args.out)


if __name__ == "__main__":
    main()
