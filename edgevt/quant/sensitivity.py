"""Accuracy-budgeted mixed precision: keep the fewest, most sensitive ops in float.

1. Rank: quantize one op at a time (``simulate.QuantSim``: exactly the tensors the exported QDQ
   graph quantizes, int8 residual adds included) and measure the KL divergence of the logits
   from fp32 on a few calibration images.
2. Choose: the smallest k such that keeping the k most sensitive ops in float brings the top-1
   drop on the calibration images within the budget (binary search; the drop is measured
   against the labels when the folder has them, else as top-1 disagreement with fp32).
The calibration images are the yardstick, never the evaluation set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgevt.data.imagenet import open_dataset
from edgevt.errors import DataError
from edgevt.quant.config import QuantConfig
from edgevt.quant.rules import TargetRules
from edgevt.quant.simulate import QuantSim
from edgevt.quant.table import CalibrationTable


@dataclass
class SensitivityResult:
    ranking: list[tuple[str, float]]  # (op, KL when only it is quantized), most sensitive first
    kept_float: list[str]
    drop_all_int8: float
    drop_chosen: float
    images: int
    measure: str  # "top-1 drop vs labels" or "top-1 disagreement with fp32"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ranking": [{"op": op, "kl": score} for op, score in self.ranking],
            "kept_float": self.kept_float,
            "drop_all_int8": self.drop_all_int8,
            "drop_chosen": self.drop_chosen,
            "images": self.images,
            "measure": self.measure,
        }


def _logits(fn, images: torch.Tensor, batch: int = 64) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([fn(images[i : i + batch]) for i in range(0, len(images), batch)]).numpy()


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    p = torch.log_softmax(torch.from_numpy(p_logits).double(), 1)
    q = torch.log_softmax(torch.from_numpy(q_logits).double(), 1)
    return float((p.exp() * (p - q)).sum(1).mean())


def choose_float_layers(
    model: nn.Module,
    table: CalibrationTable,
    config: QuantConfig,
    rules: TargetRules,
    data: str | Path | None,
    preprocess,
    max_drop: float,
    *,
    fp32_onnx: str | Path,
    n_images: int = 512,
    n_rank: int = 64,
    progress: bool = True,
) -> SensitivityResult:
    import onnx
    from tqdm import tqdm

    from edgevt.quant.onnx_qdq import file_quantized_ops

    if data is None or not Path(data).is_dir():
        raise DataError(f"--max-drop needs the calibration images; {data} is not a folder.")
    dataset = open_dataset(data, require_labels=False).subset(n_images)
    batches = list(dataset.batches(preprocess, 64))
    images = torch.from_numpy(np.concatenate([b[0] for b in batches]))
    labels = np.concatenate([b[1] for b in batches])
    labelled = bool((labels >= 0).all())
    reference = _logits(model, images)
    proto = onnx.load(str(fp32_onnx))
    fq = QuantSim.for_export(model, proto, table, config, rules)
    ops = sorted(fq.ops)
    # each candidate quantizes what the file exported with it would (a target may float more)
    quantized = file_quantized_ops(proto, table, config, rules, ops)

    def drop(kept: list[str]) -> float:
        fq.set_active(quantized(kept))
        q = _logits(fq, images).argmax(1)
        search.update()
        ref = reference.argmax(1)
        if labelled:
            return 100.0 * float((ref == labels).mean() - (q == labels).mean())
        return 100.0 * float((q != ref).mean())

    scores = []
    for op in tqdm(ops, desc="sensitivity", unit="op", disable=not progress):
        fq.set_active(quantized(set(ops) - {op}))
        scores.append((op, _kl(reference[:n_rank], _logits(fq, images[:n_rank]))))
    ranking = sorted(scores, key=lambda s: -s[1])
    order = [op for op, _ in ranking]
    # Each budget check runs every calibration image: minutes on a small CPU, so show them.
    search = tqdm(
        total=1 + len(ops).bit_length(), desc="max-drop search", unit="eval",
        disable=not progress,
    )  # fmt: skip
    all_int8 = drop([])
    best_k, best_drop = 0, all_int8
    if all_int8 > max_drop:
        lo, hi = 1, len(order)  # keeping every op in float drops nothing
        best_k, best_drop = hi, 0.0
        while lo <= hi:
            mid = (lo + hi) // 2
            d = drop(order[:mid])
            if d <= max_drop:
                best_k, best_drop, hi = mid, d, mid - 1
            else:
                lo = mid + 1
    search.close()
    fq.set_active(ops)
    measure = "top-1 drop vs labels" if labelled else "top-1 disagreement with fp32"
    return SensitivityResult(ranking, order[:best_k], all_int8, best_drop, len(images), measure)


def budget_config(ctx: Any, rules: TargetRules, fp32_onnx: Path | None = None):
    """``--max-drop`` for any target with a simulation of its int8 rules: the fewest, most
    sensitive ops to keep in float (chosen on the calibration images), as the QuantConfig the
    target then exports with; writes RUN/sensitivity.json. ``fp32_onnx``: the graph that maps
    the quantized tensors (a target without an ONNX file of its own gets a temporary one, as
    QAT does). Returns (config, the sensitivity record)."""
    import tempfile

    from edgevt.io import write_json

    config = ctx.config or QuantConfig()
    with tempfile.TemporaryDirectory(prefix="edgevt-sensitivity-") as tmp:
        if fp32_onnx is None:
            from edgevt.targets.onnx import export_onnx

            fp32_onnx = export_onnx(ctx.model, ctx.info, Path(tmp) / "graph.onnx")
        result = choose_float_layers(
            ctx.model, ctx.table, config, rules, ctx.calib or ctx.table.data,
            ctx.info.preprocess, ctx.max_drop, fp32_onnx=fp32_onnx, progress=ctx.progress,
        )  # fmt: skip
    details = result.to_dict()
    write_json(ctx.run / "sensitivity.json", details)
    return config.keep_float(result.kept_float), details


def budget_summary(details: dict[str, Any]) -> str:
    """What ``--max-drop`` chose, for an export's one-line int8 summary."""
    return (
        f"; --max-drop: all-int8 {details['drop_all_int8']:.2f} pt -> "
        f"{details['drop_chosen']:.2f} pt ({details['measure']}, {details['images']} "
        "calibration images)"
    )
