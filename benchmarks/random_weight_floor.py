"""How much int8 error can a model absorb? Random-weight transformers against a trained CNN.

The int8 bars for random-weight LeViT / CvT ask for logit cosine >= 0.999 and top-1 agreement
>= 0.98 against fp32. This script measures, on the same real images, what perturbations far
smaller than int8's do to each model, next to what int8 itself does:

* ``noise 0.1% / 0.4%``: Gaussian noise of 0.1 % / 0.4 % of the input's standard deviation;
* ``8-bit input``: only the network input rounded to 256 levels over its calibrated range
  (what quantizing the first layer's input does, and the input is an 8-bit photo anyway);
* ``int8 <rules>``: edgevt's int8 export with its default config, simulated in PyTorch by
  ``QuantSim``: exactly the Q/DQ graph written for ONNX Runtime and for TensorRT, and QAT's
  simulation of LiteRT's full-integer rules.

It also prints the median top-1 margin (top-1 minus top-2 logit) over the logits' standard
deviation: trained classifiers separate their first choice clearly, random ones do not, so
tiny perturbations flip their top-1.

    .venv/bin/python benchmarks/random_weight_floor.py [--models efficientnet_lite0 levit_128s
        cvt_13] [--images 256] [--calib-size 256] [--out reports/random_weight_floor.md]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from report_file import command_line, write_report  # noqa: E402  (benchmarks/ folder)

from edgevt import api
from edgevt.data.imagenet import default_data_root, open_dataset
from edgevt.fused import model_info
from edgevt.models import get_entry
from edgevt.quant.config import QuantConfig
from edgevt.quant.qat import QuantSim
from edgevt.targets import get_target
from edgevt.targets.onnx import export_onnx
from edgevt.validate.evaluate import compare_logits

REPO = Path(__file__).resolve().parent.parent
RULES = ("onnx", "tensorrt", "tflite")
LABELS = {"onnx": "ONNX Runtime Q/DQ", "tensorrt": "TensorRT Q/DQ", "tflite": "LiteRT rules (sim.)"}


def logits_of(fn, images: torch.Tensor, batch: int = 32) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([fn(b) for b in images.split(batch)]).numpy()


def first_input_range(table) -> tuple[float, float]:
    """The calibrated range of the image, as the first quantizable op reads it (the table
    lists ops in execution order)."""
    first = next(iter(table.source["ops"]))
    r = table.activations[f"{first}:in0"]
    return r.min, r.max


def measure(name: str, args: argparse.Namespace, work: Path) -> list[tuple[str, dict]]:
    entry = get_entry(name)
    pretrained = entry.pretrained_path is not None
    root = default_data_root()
    fused = api.fuse(name, pretrained=pretrained)
    model = fused.model.eval()
    table = api.calibrate(name, pretrained=pretrained, data=root / "imagenet-sample1000",
                          calib_size=args.calib_size, fused=fused, progress=False)  # fmt: skip
    dataset = open_dataset(root / "imagenet-val1000").subset(args.images)
    x = torch.cat([torch.from_numpy(b) for b, _ in dataset.batches(entry.preprocess, 64)])
    ref = logits_of(model, x)
    top2 = np.sort(ref, axis=1)[:, -2:]
    margin = float(np.median((top2[:, 1] - top2[:, 0]) / ref.std(1)))
    rows = [("fp32", {"cosine": 1.0, "top1_agreement": 1.0, "margin": margin})]
    gen = torch.Generator().manual_seed(0)
    for pct in (0.1, 0.4):
        noisy = x + torch.randn(x.shape, generator=gen) * (pct / 100) * x.std()
        rows.append((f"noise {pct}%", compare_logits(ref, logits_of(model, noisy))))
    lo, hi = first_input_range(table)
    scale = (hi - lo) / 255
    rounded = torch.clamp(torch.round((x - lo) / scale), 0, 255) * scale + lo
    rows.append(("8-bit input", compare_logits(ref, logits_of(model, rounded))))
    fp32_onnx = work / f"{name}.onnx"
    export_onnx(model, model_info(fused.loaded, "onnx", True), fp32_onnx)
    for rules in RULES:
        target_rules = get_target(rules).quantization_rules()
        sim = QuantSim.for_export(model, fp32_onnx, table, QuantConfig(), target_rules)
        rows.append((f"int8, {LABELS[rules]}", compare_logits(ref, logits_of(sim.eval(), x))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+",
                        default=["efficientnet_lite0", "levit_128s", "cvt_13"])  # fmt: skip
    parser.add_argument("--images", type=int, default=256, help="imagenet-val1000 images")
    parser.add_argument("--calib-size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "random_weight_floor.md")
    args = parser.parse_args()
    started = time.perf_counter()
    lines = [
        "# How much perturbation each model absorbs: trained Lite0 vs random LeViT / CvT",
        "",
        f"{args.images} images of imagenet-val1000; cosine and top-1 agreement of the logits "
        "against the model's own fp32 logits. `margin`: median (top-1 - top-2 logit) / logit "
        "std. int8 rows: edgevt's int8 numerics (default config, percentile table of "
        f"{args.calib_size} imagenet-sample1000 images) simulated in PyTorch (`QuantSim`).",
        "",
        "| model | weights | perturbation | cosine | agreement |",
        "|---|---|---|--:|--:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            print(f"[{name}]", flush=True)
            weights = "real" if get_entry(name).pretrained_path else "random"
            for label, r in measure(name, args, Path(tmp)):
                if label == "fp32":
                    label = f"none (margin {r['margin']:.2f})"
                lines.append(f"| {name} | {weights} | {label} | {r['cosine']:.6f} "
                             f"| {r['top1_agreement']:.3f} |")  # fmt: skip
                print(lines[-1], flush=True)
    lines += [
        "",
        f"Command: `{command_line()}` "
        f"({(time.perf_counter() - started) / 60:.0f} min).",
    ]
    text = "\n".join(lines) + "\n"
    write_report(text, args.out)


if __name__ == "__main__":
    main()
