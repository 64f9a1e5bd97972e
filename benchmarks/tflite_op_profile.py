"""Which op types make full-integer LiteRT slow on this CPU, and the fastest int8 recipe.

LiteRT's Python API has no per-op profiler, so this measures the cost of each op type in int8
directly: edgevt exports the fp32 and the full-integer int8 .tflite of one model from one
CalibrationTable, then one more int8 file per TFLite op type with that type kept in float
(``--float-ops TYPE``, everything else as in the full-int8 file). The latency difference
``full int8 - int8 with TYPE in float`` is what running TYPE in int8 costs (negative: int8
TYPE is faster than float). The "fast int8" recipe then keeps in float every type whose int8
form costs more than ``--min-saving`` of the full-int8 latency, and is timed and checked too.

Latency: batch 1, LiteRT/XNNPACK, median of interleaved rounds (noise hits every variant
alike). Accuracy: logit cosine and top-1 agreement against the fp32 .tflite on ``--check``
images of imagenet-val1000 (and top-1 for real checkpoints).

    .venv/bin/python benchmarks/tflite_op_profile.py levit_128s [--pretrained] \\
        [--calib-size 128] [--threads 1 2] [--out reports/tflite_op_profile_levit_128s.md]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from report_file import cpu_flags  # noqa: E402

from edgevt import api
from edgevt.data.imagenet import default_data_root, open_dataset
from edgevt.io import atomic_path
from edgevt.models import get_entry
from edgevt.quant.calibrate import calibration_batches
from edgevt.quant.table import CalibrationTable
from edgevt.quant.tflite_ranges import read_ops
from edgevt.targets import tflite
from edgevt.targets.tflite_profile import LAYOUT_OPS
from edgevt.timing import median_ms_loaded_in_turn, runner_turn
from edgevt.validate.evaluate import compare_logits

REPO = Path(__file__).resolve().parent.parent
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model")
    p.add_argument("--pretrained", action="store_true")
    p.add_argument("--calib-size", type=int, default=128)
    p.add_argument("--check", type=int, default=200, help="val images for the accuracy columns")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--min-saving", type=float, default=0.03,
                   help="fraction of full-int8 latency an op type must cost to go float")
    p.add_argument("--work", type=Path, help="where the files go (default runs/tflite-profile-M)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    started = time.perf_counter()
    root = default_data_root()
    entry = get_entry(args.model)
    work = args.work or REPO / "runs" / f"tflite-profile-{args.model}"
    print(f"exporting {args.model} fp32 + full int8 ...", flush=True)
    out = api.export(
        args.model, "tflite", pretrained=args.pretrained, out=work, precisions=["int8"],
        calib=root / "imagenet-sample1000", calib_size=args.calib_size, progress=False,
    )  # fmt: skip
    fp32 = out.artifact
    table = CalibrationTable.load(work / "calibration.json")
    fused = api.fuse(args.model, pretrained=args.pretrained).model
    modules = [name for name, _ in fused.named_modules()]
    n_gap = min(args.calib_size, tflite.GAP_CALIBRATION_IMAGES)
    batches = calibration_batches(entry.preprocess, root / "imagenet-sample1000", n_gap,
                                  progress=False)  # fmt: skip
    gap = torch.cat(list(batches)).numpy()
    info = tflite.read_tflite_info(fp32)

    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    census = Counter(op.op_type for op in read_ops(fu.read_model(fp32)))
    candidates = sorted(t for t in census if t not in LAYOUT_OPS)
    files = {"fp32": fp32, "full int8": work / "model_int8.tflite"}

    def int8_file(label: str, float_ops: tuple[str, ...]) -> None:
        path = work / ("int8_float_" + "_".join(o.lower() for o in float_ops) + ".tflite")
        t0 = time.perf_counter()
        tflite.quantize(fp32, path, "int8", info, table=table, modules=modules, images=gap,
                        float_ops=float_ops)  # fmt: skip
        files[label] = path
        print(f"  {label}: {time.perf_counter() - t0:.0f} s", flush=True)

    print(f"op census of the fp32 file: {dict(census)}", flush=True)
    for op in candidates:
        int8_file(f"int8, {op} float", (op,))
    ms = time_files(files, args)
    base = max(args.threads)  # the recipe is chosen at the thread count a device would use
    cost = {op: ms["full int8"][base] - ms[f"int8, {op} float"][base] for op in candidates}
    slow = tuple(op for op in candidates if cost[op] > args.min_saving * ms["full int8"][base])
    if slow:
        int8_file("fast int8", slow)
        ms.update(time_files({k: files[k] for k in ("fp32", "full int8", "fast int8")}, args,
                             prefix="recipe "))  # fmt: skip
    acc = accuracy(files, entry, root, args)
    lines = report(args, files, census, candidates, cost, slow, ms, acc, base)
    text = "\n".join(lines) + (
        f"\n\nCommand: `{shlex.join([Path(sys.executable).name, *sys.argv])}` "
        f"({(time.perf_counter() - started) / 60:.0f} min)\n"
    )
    print(text)
    if args.out:
        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(text)
        print(f"wrote {args.out}")
    return 0


def time_files(files: dict[str, Path], args, prefix: str = "") -> dict[str, dict[int, float]]:
    x = next(open_dataset(default_data_root() / "imagenet-val1000").batches(
        get_entry(args.model).preprocess, 1))[0]  # fmt: skip
    result: dict[str, dict[int, float]] = {}
    for threads in args.threads:
        loaders = {k: runner_turn(lambda p=p, t=threads: tflite.LiteRTRunner(p, threads=t), x)
                   for k, p in files.items()}  # fmt: skip
        medians = median_ms_loaded_in_turn(loaders, args.rounds, args.iters)
        for k in files:
            result.setdefault(prefix + k, {})[threads] = medians[k]
        print(f"  timed {len(files)} files at {threads} thread(s)", flush=True)
    return result


def accuracy(files: dict[str, Path], entry, root: Path, args) -> dict[str, dict[str, float]]:
    dataset = open_dataset(root / "imagenet-val1000").subset(args.check)
    logits, labels = {}, None
    for k, path in files.items():
        with tflite.LiteRTRunner(path, threads=max(args.threads)) as runner:
            chunks, ys = [], []
            for images, y in dataset.batches(entry.preprocess, 25):
                chunks.append(runner.infer(images))
                ys.append(y)
        logits[k], labels = np.concatenate(chunks), np.concatenate(ys)
    out = {}
    for k in files:
        cmp = compare_logits(logits["fp32"], logits[k])
        out[k] = {"cosine": cmp["cosine"], "agreement": cmp["top1_agreement"],
                  "top1": 100 * float((logits[k].argmax(1) == labels).mean())}  # fmt: skip
    return out


def report(args, files, census, candidates, cost, slow, ms, acc, base) -> list[str]:
    threads = args.threads
    weights = "real checkpoint" if args.pretrained else "random weights"
    head = "| variant | MB | cosine | agreement |" + (" top-1 % |" if args.pretrained else "")
    head += "".join(f" p50 ms {t}T |" for t in threads) + f" int8 cost of the op type {base}T |"
    lines = [
        f"# LiteRT int8 op-type profile: {args.model} ({weights})",
        "",
        f"Full-integer int8 from one CalibrationTable ({args.calib_size} images of "
        "imagenet-sample1000), then one int8 file per op type with that type kept in float. "
        "`int8 cost` = full-int8 latency minus that file's latency: the time the op type "
        "costs by running in int8 instead of float (negative: int8 is faster). Cosine and "
        f"agreement vs the fp32 .tflite on {args.check} images of imagenet-val1000. Latency: "
        "batch 1, LiteRT/XNNPACK, median of interleaved rounds (each file loaded for its turn "
        f"only), this machine's CPU ({cpu_flags()}).",
        "",
        f"Op census of the fp32 file: {', '.join(f'{k} {v}' for k, v in sorted(census.items()))}.",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    rows = ["fp32", "full int8"] + [f"int8, {op} float" for op in candidates]
    for k in rows:
        a = acc[k]
        mb = files[k].stat().st_size / 1e6
        cells = [k, f"{mb:.1f}", f"{a['cosine']:.5f}", f"{a['agreement']:.3f}"]
        if args.pretrained:
            cells.append(f"{a['top1']:.1f}")
        cells += [f"{ms[k][t]:.2f}" for t in threads]
        op = k.removeprefix("int8, ").removesuffix(" float")
        cells.append(f"{cost[op]:+.2f} ms" if op in cost else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if slow:
        a = acc["fast int8"]
        lines += [
            f"**Fast int8 recipe** (`--float-ops {' '.join(slow)}`): the op types whose int8 "
            f"form costs more than {100 * args.min_saving:.0f} % of the full-int8 latency "
            f"at {base} thread(s), kept in float together; timed again beside fp32 and full "
            "int8 in one run:",
            "",
            "| variant | cosine | agreement |" + (" top-1 % |" if args.pretrained else "")
            + "".join(f" p50 ms {t}T | vs fp32 {t}T |" for t in threads),
            "|" + "---|" * (3 + (1 if args.pretrained else 0) + 2 * len(threads)),
        ]
        for k in ("fp32", "full int8", "fast int8"):
            a = acc[k]
            cells = [k, f"{a['cosine']:.5f}", f"{a['agreement']:.3f}"]
            if args.pretrained:
                cells.append(f"{a['top1']:.1f}")
            for t in threads:
                m = ms["recipe " + k][t]
                cells += [f"{m:.2f}", f"{ms['recipe fp32'][t] / m:.2f}x"]
            lines.append("| " + " | ".join(cells) + " |")
    else:
        lines.append("No op type costs enough in int8 to keep in float: full int8 is the recipe.")
    return lines


if __name__ == "__main__":
    sys.exit(main())
