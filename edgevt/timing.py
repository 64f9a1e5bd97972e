"""Latency of several files measured so that they can be compared: interleaved rounds, each
file loaded only for its turn (what ``edgevt export`` uses to choose an int8 recipe, and the
``benchmarks/`` scripts use for their tables)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

from edgevt.targets.base import Runner


def median_ms_loaded_in_turn(
    loaders: dict[str, Callable[[], tuple[Callable[[], object], Callable[[], None]]]],
    rounds: int,
    iters: int,
) -> dict[str, float]:
    """Median per-call latency of each variant, timed in interleaved rounds after a warm-up
    (machine noise hits every variant alike); each variant is loaded only for its turn of
    each round: ``loaders[name]()`` returns (call, close). Idle ONNX Runtime sessions and LiteRT
    interpreters keep thread pools that spin after a run; left loaded, they steal the cores
    from whichever variant runs next (on 2 cores PyTorch eager read 27 ms instead of 11 ms
    that way, and 2-thread runs lost to 1-thread ones)."""
    samples: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(rounds):
        for name, load in loaders.items():
            fn, close = load()
            for _ in range(3):  # warm-up
                fn()
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            samples[name].append((time.perf_counter() - start) / iters * 1e3)
            close()
    return {name: statistics.median(s) for name, s in samples.items()}


def runner_turn(make_runner: Callable[[], Runner], x: np.ndarray):
    """A loader for ``median_ms_loaded_in_turn``: build and activate a runner, time
    ``infer(x)``, release the runner (and its thread pool) after its turn."""

    def load() -> tuple[Callable[[], object], Callable[[], None]]:
        runner = make_runner()
        runner.activate()
        return (lambda: runner.infer(x)), runner.deactivate

    return load
