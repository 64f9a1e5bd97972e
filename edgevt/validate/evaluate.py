"""Top-1/top-5 of any runner on labelled images, with the logits kept for comparisons."""

from __future__ import annotations

import time
from collections.abc import Callable
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

    def per_class(self) -> dict[int, tuple[int, int, int]]:
        """Class index -> (images, top-1 hits, top-5 hits); needs the kept logits."""
        if self.logits is None or self.labels is None:
            raise ValueError("per_class needs the logits (evaluate with keep_logits=True)")
        top1 = topk_correct(self.logits, self.labels, 1)
        top5 = topk_correct(self.logits, self.labels, 5)
        return {
            int(c): (int(m.sum()), int(top1[m].sum()), int(top5[m].sum()))
            for c in np.unique(self.labels)
            for m in [self.labels == c]
        }

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
        all_logits, all_labels = infer_dataset(runner, dataset, batch_size, bar.update)
    return scored(
        all_logits, all_labels, runner.describe(), str(dataset.root),
        time.perf_counter() - start, keep_logits,
    )  # fmt: skip


def infer_dataset(
    runner: Runner,
    dataset: ImageDataset,
    batch_size: int = 32,
    done: Callable[[int], object] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of every image, in the dataset's order (``done(n)`` after each batch).
    The runner stays loaded: a worker evaluating many shards loads its model once."""
    logits, labels = [], []
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
        if done is not None:
            done(len(batch_labels))
    return np.concatenate(logits), np.concatenate(labels)


def scored(
    logits: np.ndarray,
    labels: np.ndarray,
    runner: dict[str, Any],
    data: str,
    seconds: float,
    keep_logits: bool = True,
) -> EvalResult:
    """The EvalResult of logits in image order (one process's, or shards' merged)."""
    return EvalResult(
        top1=100.0 * float(topk_correct(logits, labels, 1).mean()),
        top5=100.0 * float(topk_correct(logits, labels, 5).mean()),
        n=len(labels),
        runner=runner,
        data=data,
        seconds=seconds,
        logits=logits if keep_logits else None,
        labels=labels if keep_logits else None,
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
