"""What each op type costs in int8 on this host, and the int8 recipe chosen from it.

Runtimes' Python APIs have no per-op profiler that tells int8 from float, so the cost is
measured by difference, the way ``benchmarks/tflite_op_profile.py`` first did: besides the fp32
and the full-int8 file, one int8 file per op type with that type kept in float. ``full int8 -
int8 with T in float`` is what running T in int8 costs (negative: int8 T is faster). Each file
is also scored against the fp32 file's logits on a few calibration images (cosine), which is
what keeping T in float buys in accuracy.

One op type at a time cannot find a recipe where types only pay off together: CvT-13's
LayerNorm leaves int8 whole or not at all, and each int8 op XNNPACK does not take (RSQRT, GELU)
cuts the graph into partitions, run between by TFLite's single-threaded kernels. So the profile
also measures a *group*: the op types whose float form cuts the file into the fewest XNNPACK
partitions (``tflite_profile.fewest_partitions``, counted, not timed, so it costs seconds).

From that profile, ``choose`` picks the op types to keep in float:

* ``latency``: every type whose int8 form costs more than ``MIN_SAVING`` of the full-int8
  time (LeViT's BATCH_MATMUL, HARD_SWISH and SOFTMAX under LiteRT on x86);
* ``balanced`` (the default): those, plus any type whose float form buys accuracy
  (cosine +``ACCURACY_GAIN``) for less than ``CHEAP`` of fp32's time (LeViT's residual ADDs);
* ``accuracy``: those, plus the types that buy the most accuracy, for as long as the sum of
  the measured costs keeps the file no slower than fp32;
* ``full``: nothing in float (NPUs and the Edge TPU need every op in int8); no profile.

The ``latency`` types' own file is then measured again beside full int8 and the group (their
predicted time, a sum of separately measured savings, counts twice what two types save
together, and one noisy round can make a type look faster in float). Types whose own file is
not ``MIN_SAVING`` faster than full int8 there are not kept; where the group was measured
faster, it replaces them as the fast base of every mode; ``balanced`` and ``accuracy`` add
their accuracy types to it as they would to those.

The chosen file is timed again beside fp32 (the guard: an int8 file slower than its fp32
sibling is never passed off silently).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgevt.errors import EdgevtError

OPTIMIZE = ("balanced", "latency", "accuracy", "full")
MIN_SAVING = 0.03  # an int8 op type slower than float by 3 % of the file's time goes float
ACCURACY_GAIN = 0.002  # cosine to fp32 that a float op type must buy to be worth its time
CHEAP = 0.10  # ... in balanced mode, for at most this share of fp32's time
NOISE_MS = 0.05  # a cost smaller than this is timing noise (a 32-px test model's ops): none
COUNT_NOISE = 0.01  # instruction counts repeat within 1 %: a smaller difference is none
MS, COUNTS = "ms", "M instructions"  # the profile's unit: host time, or aarch64 instructions
ROUNDS, ITERATIONS = 5, 8
TURN_MS = 300.0


@dataclass
class Variant:
    """One measured file: its float op types, cost per thread count (ms, or millions of
    aarch64 instructions under emulation: the profile's unit), cosine to fp32."""

    label: str
    float_types: list[str]
    ms: dict[int, float]
    cosine: float
    partitions: int | None = None  # XNNPACK partitions of the file (None: not counted)


@dataclass
class OpProfile:
    """The op-type profile of one model's int8 on one target and host."""

    model: str
    target: str
    host: str
    threads: list[int]
    census: dict[str, int]
    fp32: Variant
    full: Variant
    types: list[Variant] = field(default_factory=list)  # one per op type kept in float
    unit: str = MS  # or COUNTS: an ARM core's instruction counts (emulated), not a time
    groups: list[Variant] = field(default_factory=list)  # several types in float together

    @property
    def base(self) -> int:
        """The thread count recipes are chosen at: the largest profiled (what devices run)."""
        return max(self.threads)

    @property
    def noise(self) -> float:
        """A difference smaller than this, in the profile's unit, is none."""
        return NOISE_MS if self.unit == MS else COUNT_NOISE * self.full.ms[self.base]

    def cost(self, op_type: str) -> float:
        """What ``op_type`` costs by running in int8 at ``base`` threads, in the profile's
        unit (negative: saves; 0 within the noise, so that noise never decides)."""
        variant = next(v for v in self.types if v.float_types == [op_type])
        cost = self.full.ms[self.base] - variant.ms[self.base]
        return cost if abs(cost) >= self.noise else 0.0

    def measured(self, float_types: list[str]) -> Variant | None:
        """The profile's own file with exactly ``float_types`` in float, if it timed one
        (the latest, head to head, first)."""
        wanted = sorted(float_types)
        return next((v for v in [*self.groups, self.full, *self.types]
                     if sorted(v.float_types) == wanted), None)  # fmt: skip

    def predicted(self, float_types: list[str]) -> float:
        """The time (or count) at ``base`` of the int8 file with ``float_types`` in float:
        measured where the profile holds that very file, else full int8 less the measured
        per-type costs (a sum that counts twice what two types save together)."""
        same = self.measured(float_types)
        if same is not None:
            return same.ms[self.base]
        return self.full.ms[self.base] - sum(self.cost(t) for t in float_types)

    def gain(self, op_type: str) -> float:
        """Cosine to fp32 that keeping ``op_type`` in float buys."""
        variant = next(v for v in self.types if v.float_types == [op_type])
        return variant.cosine - self.full.cosine

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cost_ms"] = {v.float_types[0]: self.cost(v.float_types[0]) for v in self.types}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OpProfile:
        def variant(d: dict[str, Any]) -> Variant:
            ms = {int(k): float(v) for k, v in d["ms"].items()}
            parts = d.get("partitions")
            return Variant(d["label"], list(d["float_types"]), ms, float(d["cosine"]),
                           None if parts is None else int(parts))  # fmt: skip

        return cls(
            data["model"], data["target"], data["host"], [int(t) for t in data["threads"]],
            dict(data["census"]), variant(data["fp32"]), variant(data["full"]),
            [variant(v) for v in data["types"]], str(data.get("unit", MS)),
            [variant(v) for v in data.get("groups", [])],
        )  # fmt: skip

    def save(self, path: Path) -> Path:
        from edgevt.io import write_json

        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> OpProfile:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EdgevtError(f"{path} is not an op profile edgevt wrote ({exc}).") from exc


def latency_types(profile: OpProfile) -> list[str]:
    """The op types whose int8 form costs more than ``MIN_SAVING`` of full int8's time."""
    full_ms = profile.full.ms[profile.base]
    return [v.float_types[0] for v in profile.types
            if profile.cost(v.float_types[0]) > MIN_SAVING * full_ms]  # fmt: skip


def choose(profile: OpProfile, mode: str) -> list[str]:
    """The op types to keep in float for ``mode`` (see the module doc)."""
    if mode not in OPTIMIZE:
        raise EdgevtError(f"--optimize {mode}: choose from {', '.join(OPTIMIZE)}.")
    if mode == "full":
        return []
    names = [v.float_types[0] for v in profile.types]
    fp32_ms = profile.fp32.ms[profile.base]
    chosen = latency_types(profile)
    predicted = profile.predicted(chosen)  # measured where timed again beside full int8
    faster = [g for g in profile.groups if g.ms[profile.base] < predicted - profile.noise]
    if faster:  # a group measured faster than the per-type prediction is the fast base
        group = min(faster, key=lambda g: g.ms[profile.base])
        chosen, predicted = list(group.float_types), group.ms[profile.base]
    full_ms = profile.full.ms[profile.base]
    if chosen and predicted > full_ms * (1 - MIN_SAVING):  # a noisy round's types: not kept
        chosen, predicted = [], full_ms
    rest = sorted((t for t in names if t not in chosen), key=profile.gain, reverse=True)
    for t in rest:
        if profile.gain(t) < ACCURACY_GAIN:
            break
        extra = -profile.cost(t)  # what keeping t in float adds to the time
        if mode == "balanced" and extra <= CHEAP * fp32_ms or (
            mode == "accuracy" and predicted + extra <= fp32_ms
        ):
            chosen.append(t)
            predicted += extra
    return sorted(chosen)


def measure(
    files: dict[str, Path],
    make_runner: Callable[[Path, int], Any],
    x: np.ndarray,
    images: np.ndarray,
    threads: list[int],
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, tuple[dict[int, float], float]]:
    """Latency at each thread count (interleaved rounds, batch 1 on ``x``) and cosine to the
    ``"fp32"`` file's logits on ``images``, for every file."""
    from edgevt.timing import median_ms_loaded_in_turn, runner_turn

    ms: dict[str, dict[int, float]] = {k: {} for k in files}
    iterations = _iterations(make_runner(next(iter(files.values())), max(threads)), x)
    for t in threads:
        loaders = {k: runner_turn(lambda p=p, t=t: make_runner(p, t), x) for k, p in files.items()}
        for k, value in median_ms_loaded_in_turn(loaders, ROUNDS, iterations).items():
            ms[k][t] = value
        progress(f"timed {len(files)} files at {t} thread(s)")
    logits = {}
    for k, path in files.items():
        with make_runner(path, max(threads)) as runner:
            logits[k] = runner.infer(images)
    from edgevt.validate.evaluate import compare_logits

    return {k: (ms[k], compare_logits(logits["fp32"], logits[k])["cosine"]) for k in files}


def _iterations(runner: Any, x: np.ndarray) -> int:
    """Timed calls per turn: ``ITERATIONS``, fewer for a slow model (CvT-13 at 130 ms: 3), so
    that a turn takes about ``TURN_MS`` and a profile of 15 files stays within minutes."""
    import time

    with runner:
        runner.infer(x)
        start = time.perf_counter()
        runner.infer(x)
        ms = (time.perf_counter() - start) * 1e3
    return max(3, min(ITERATIONS, int(TURN_MS / max(ms, 1e-3))))


def host_label() -> str:
    import os
    import platform

    from edgevt.bench import host_info

    info = host_info()
    return f"{platform.machine()}, {info['processor']}, {os.cpu_count()} CPUs"


def default_threads() -> list[int]:
    import os

    return sorted({1, min(2, os.cpu_count() or 1)})


def speed_line(label: str, ms: dict[int, float], fp32_ms: dict[int, float]) -> str:
    """'int8 2.41 ms vs fp32 4.30 ms at 2 threads (1.78x)' for every thread count."""
    parts = [f"{ms[t]:.2f} ms vs fp32 {fp32_ms[t]:.2f} ms at {t} thread{'s' * (t > 1)} "
             f"({fp32_ms[t] / ms[t]:.2f}x)" for t in sorted(ms)]  # fmt: skip
    return f"{label}: " + "; ".join(parts)


def slower_than_fp32(ms: dict[int, float], fp32_ms: dict[int, float]) -> list[int]:
    """Thread counts at which the int8 file is slower than fp32 (beyond 2 % timing noise)."""
    return [t for t in sorted(ms) if ms[t] > fp32_ms[t] * 1.02 and math.isfinite(ms[t])]
