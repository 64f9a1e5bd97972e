"""Top-1/top-5 of any runner on labelled images, with the logits kept for comparisons."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgevt.data.imagenet import ImageDataset
from edgevt.errors import DataError, EdgevtError

if TYPE_CHECKING:  # the runners import this module's compare_logits
    from edgevt.targets.base import Runner


@dataclass
class EvalResult:
    top1: float  # percent
    top5: float  # percent
    n: int
    runner: dict[str, Any]
    data: str
    seconds: float
    logits: np.ndarray | None = field(default=None, repr=False)
    labels: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "top1": round(self.top1, 3),
            "top5": round(self.top5, 3),
            "n": self.n,
            "data": self.data,
            "seconds": round(self.seconds, 2),
            "runner": self.runner,
        }


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    top = np.argpartition(-logits, kth=min(k, logits.shape[1]) - 1, axis=1)[:, :k]
    return (top == labels[:, None]).any(axis=1)


def evaluate(
    runner: Runner,
    dataset: ImageDataset,
    batch_size: int = 32,
    progress: bool = True,
    keep_logits: bool = True,
) -> EvalResult:
    """Run ``runner`` over ``dataset`` once and score top-1/top-5 against its labels."""
    if not dataset.labelled:
        raise DataError(f"{dataset.root} has no labels; evaluation needs labelled images.")
    from tqdm.auto import tqdm

    logits, labels = [], []
    start = time.perf_counter()
    with (
        runner,
        tqdm(
            total=len(dataset),
            unit="img",
            desc=f"eval {runner.info.model}",
            disable=None if progress else True,
            leave=False,
        ) as bar,
    ):
        for images, batch_labels in dataset.batches(runner.info.preprocess, batch_size):
            out = runner.infer(images)
            if not np.isfinite(out).all():  # scores of NaN logits would read as a bad model
                what = getattr(runner, "path", None) or runner.info.model
                raise EdgevtError(
                    f"{what} gives NaN or infinite logits on {dataset.root}: its weights are "
                    "damaged or an op overflows — export it again (and `edgevt eval` the run's "
                    "fp32 file to see whether that one is fine)."
                )
            logits.append(out)
            labels.append(batch_labels)
            bar.update(len(batch_labels))
    all_logits = np.concatenate(logits)
    all_labels = np.concatenate(labels)
    return EvalResult(
        top1=100.0 * float(topk_correct(all_logits, all_labels, 1).mean()),
        top5=100.0 * float(topk_correct(all_logits, all_labels, 5).mean()),
        n=len(all_labels),
        runner=runner.describe(),
        data=str(dataset.root),
        seconds=time.perf_counter() - start,
        logits=all_logits if keep_logits else None,
        labels=all_labels if keep_logits else None,
    )


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Top-1 agreement, mean per-sample cosine and max abs difference of two logit sets."""
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    cos = (ref * cand).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1) + 1e-12)
    return {
        "top1_agreement": float((ref.argmax(1) == cand.argmax(1)).mean()),
        "cosine": float(cos.mean()),
        "max_abs_diff": float(np.abs(ref - cand).max()),
    }
