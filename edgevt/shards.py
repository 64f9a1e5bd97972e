"""Sharded evaluation: a large labelled set split into whole batches, evaluated by parallel
workers that each load the model once, and merged in image order.

Shards are runs of whole batches of the single-process order, so every worker feeds its
runtime exactly the batches one process would: the merged logits, and so top-1/top-5,
lost/won and per-class counts, equal a single-process run's bit for bit.

The workers are local processes (``edgevt eval --workers N``) or Ray actors (``RayWorkers``,
what a sweep's cells use); both run ``ShardWorker``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgevt.errors import EdgevtError
from edgevt.validate.evaluate import EvalResult, scored

CHUNKS_PER_WORKER = 4  # more, smaller shards than workers: progress moves, a slow one waits less


@dataclass(frozen=True)
class EvalJob:
    """What a worker needs to open the same runner and the same image list as one process."""

    model: str  # zoo name, artifact path or fused.pt
    data: str
    labels: str | None = None
    limit: int | None = None
    batch_size: int = 32
    threads: int | None = None
    runner_options: dict[str, Any] = field(default_factory=dict)  # checkpoint, pretrained, ...


def plan_shards(images: int, batch_size: int, workers: int) -> list[tuple[int, int]]:
    """``[start, stop)`` image ranges of whole batches, about CHUNKS_PER_WORKER per worker."""
    batches = -(-images // batch_size)
    per_shard = max(1, -(-batches // (workers * CHUNKS_PER_WORKER)))
    return [
        (b * batch_size, min(images, (b + per_shard) * batch_size))
        for b in range(0, batches, per_shard)
    ]


class ShardWorker:
    """One worker: opens the runner and the image list once, then evaluates shards of it."""

    def __init__(self, job: EvalJob) -> None:
        from edgevt.data.imagenet import open_dataset
        from edgevt.runners import open_runner

        self.job = job
        self.runner = open_runner(job.model, threads=job.threads, **job.runner_options)
        self.runner.activate()
        self.dataset = open_dataset(
            job.data, labels=job.labels, synsets=self.runner.info.classes
        ).subset(job.limit)

    def size(self) -> int:
        return len(self.dataset)

    def describe(self) -> dict[str, Any]:
        return self.runner.describe()

    def run(self, shard: tuple[int, int]) -> tuple[int, np.ndarray, np.ndarray]:
        from edgevt.data.imagenet import ImageDataset
        from edgevt.validate.evaluate import infer_dataset

        start, stop = shard
        whole = self.dataset
        part = ImageDataset(whole.samples[start:stop], whole.root, whole.layout)
        logits, labels = infer_dataset(self.runner, part, self.job.batch_size)
        return start, logits, labels


def evaluate_sharded(
    job: EvalJob,
    workers: int,
    progress: bool = True,
    pool: Callable[[EvalJob, int], Any] | None = None,
) -> EvalResult:
    """Evaluate ``job`` on ``workers`` workers (local processes unless ``pool`` makes others)
    and merge the shards into one EvalResult."""
    from tqdm.auto import tqdm

    if workers < 1:
        raise EdgevtError(f"--workers {workers}: give 1 or more workers.")
    start = time.perf_counter()
    if job.threads is None:  # the cores shared out, not every worker spinning on all of them
        job = EvalJob(**{**job.__dict__, "threads": max(1, (os.cpu_count() or 1) // workers)})
    parts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    with (pool or LocalWorkers)(job, workers) as running:
        images = running.size()  # a worker's image list: a bad model or folder fails here
        shards = plan_shards(images, job.batch_size, workers)
        with tqdm(
            total=images, unit="img", desc=f"eval on {workers} workers",
            disable=None if progress else True, leave=False,
        ) as bar:  # fmt: skip
            for first, logits, labels in running.map(shards):
                parts[first] = (logits, labels)
                bar.update(len(labels))
        described = running.describe()
    order = sorted(parts)
    logits = np.concatenate([parts[s][0] for s in order])
    labels = np.concatenate([parts[s][1] for s in order])
    described["workers"] = workers
    return scored(logits, labels, described, job.data, time.perf_counter() - start)


_WORKER: ShardWorker | BaseException | None = None  # a local worker process's one runner


def _start_worker(job: EvalJob) -> None:
    global _WORKER
    try:
        _WORKER = ShardWorker(job)
    except BaseException as exc:  # raised again by each call, so the parent gets the message
        _WORKER = exc


def _call(method: str, *args: Any) -> Any:
    if isinstance(_WORKER, BaseException):
        raise _WORKER
    assert _WORKER is not None
    return getattr(_WORKER, method)(*args)


class LocalWorkers:
    """Worker processes on this machine (spawned: a forked torch/ONNX Runtime can hang)."""

    def __init__(self, job: EvalJob, workers: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(job,),
        )

    def __enter__(self) -> LocalWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=exc[0] is None, cancel_futures=True)

    def map(self, shards: list[tuple[int, int]]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        from concurrent.futures import as_completed
        from concurrent.futures.process import BrokenProcessPool

        futures = [self.pool.submit(_call, "run", s) for s in shards]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BrokenProcessPool as exc:
            raise EdgevtError(
                f"an evaluation worker died ({exc}); out of memory? Use fewer --workers."
            ) from None

    def size(self) -> int:
        return self.pool.submit(_call, "size").result()

    def describe(self) -> dict[str, Any]:
        return self.pool.submit(_call, "describe").result()


class RayWorkers:
    """Ray actors, one per worker, each holding one loaded runner (``ray.init`` done by the
    caller: a sweep's cluster)."""

    def __init__(self, job: EvalJob, workers: int) -> None:
        import ray

        remote = ray.remote(num_cpus=1)(ShardWorker)
        self.actors = [remote.remote(job) for _ in range(workers)]

    def __enter__(self) -> RayWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)

    def map(self, shards: list[tuple[int, int]]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        from ray.util import ActorPool

        yield from ActorPool(self.actors).map_unordered(
            lambda actor, shard: actor.run.remote(shard), shards
        )

    def size(self) -> int:
        import ray

        return ray.get(self.actors[0].size.remote())

    def describe(self) -> dict[str, Any]:
        import ray

        return ray.get(self.actors[0].describe.remote())
