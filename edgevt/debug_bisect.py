"""`edgevt debug --max-drop PT | --fix-to COSINE`: a small set of ops to keep in float that
reaches the goal, measured on exported files (not on the simulation), written as a quant
config that `edgevt export --quant-config` takes as is.

1. Rank: each op alone in int8 in edgevt's simulation of the target (``QuantSim``), by the KL
   divergence of its logits from fp32 (the sensitivity ranking the report charts). Every
   candidate is simulated as the file the export would write with it: ONNX Runtime's export
   also keeps in float a conv whose input and output both end up float (``plan_and_quantize``),
   so keeping EfficientNet's first depthwise conv in float floats the stem as well.
2. Order: greedily, the op whose return to float lowers that KL most, given the ones already
   chosen (among the ``GREEDY_POOL`` ops that help most alone; the rest follow by rank). Ops
   that hurt together are found together, where ranking each alone misses them.
3. Bisect: the shortest prefix of that order kept in float whose *exported file* (the same
   table, config and rules, written with those ops in float and run by the target's runner)
   meets the goal on the images (at most the longest prefix that leaves the file an int8 op):
   top-1 drop against their labels (or disagreement with fp32 without labels) at most
   ``max_drop`` points, or logits cosine to fp32 at least ``fix_to``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgevt.errors import EdgevtError

RANK_IMAGES = 32  # images the simulated rankings run on
GREEDY_POOL = 16  # ops the greedy order picks among (the ones that help most alone)
GREEDY_STEPS = 10  # picks the greedy order makes before following the plain ranking


@dataclass
class BisectResult:
    goal: str
    kept_float: list[str]
    measured: float  # the goal's measure on the file with ``kept_float`` in float
    as_given: float  # the same measure on the artifact as exported
    met: bool
    files_checked: int
    ranking: list[tuple[str, float]]  # (op, KL when only it is int8), most sensitive first
    config: str  # the quant config written
    # (op, simulated KL with it and the ones before it in float): the order the bisection
    # keeps ops in float in
    order: list[tuple[str, float]] = field(default_factory=list)
    # ops the file keeps in float beside ``kept_float``, by the target's own rules
    also_float: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _images(data: str | Path, preprocess, limit: int) -> tuple[torch.Tensor, np.ndarray]:
    from edgevt.data.imagenet import open_dataset

    dataset = open_dataset(data, require_labels=False).subset(limit)
    batches = list(dataset.batches(preprocess, 32))
    if not batches:
        raise EdgevtError(f"{data} holds no images to bisect on.")
    return (torch.from_numpy(np.concatenate([b[0] for b in batches])),
            np.concatenate([b[1] for b in batches]))  # fmt: skip


def _kl(p: torch.Tensor, q: torch.Tensor) -> float:
    lp, lq = torch.log_softmax(p.double(), 1), torch.log_softmax(q.double(), 1)
    return float((lp.exp() * (lp - lq)).sum(1).mean())


Quantized = Callable[[Iterable[str]], set[str]]  # ops kept in float -> ops the file quantizes


def rank_ops(sim: Any, images: torch.Tensor, reference: torch.Tensor, progress: bool,
             quantized: Quantized):  # fmt: skip
    """(op, KL of the logits when only that op is int8), most sensitive first (0 for an op the
    target's file would not quantize alone)."""
    from tqdm import tqdm

    ops = sorted(sim.ops)
    scores = []
    with torch.no_grad():
        for op in tqdm(ops, desc="rank ops", unit="op", disable=not progress):
            sim.set_active(quantized(set(ops) - {op}))
            scores.append((op, _kl(reference, sim(images))))
    sim.set_active(ops)
    return sorted(scores, key=lambda s: -s[1])


def float_order(sim: Any, images: torch.Tensor, reference: torch.Tensor, progress: bool,
                quantized: Quantized):  # fmt: skip
    """[(op, simulated KL with it and all before it in float)], greedily (see the module
    doc), then the ops the greedy part did not pick, most helpful alone first."""
    from tqdm import tqdm

    ops = sorted(sim.ops)

    def kl_without(kept: list[str]) -> float:
        sim.set_active(quantized(kept))
        return _kl(reference, sim(images))

    def int8_first(s: tuple[str, float]) -> tuple[bool, float]:
        # a set the target's file would run wholly in float is the fp32 model: KL 0, but no
        # int8 file; every set that leaves one comes before it
        return not quantized([*(op for op, _ in order), s[0]]), s[1]

    with torch.no_grad():
        order: list[tuple[str, float]] = []
        alone = sorted(((op, kl_without([op])) for op in tqdm(
            ops, desc="each op in float", unit="op", disable=not progress)),
            key=int8_first)  # fmt: skip
        pool = [op for op, _ in alone[:GREEDY_POOL]]
        steps = min(GREEDY_STEPS, len(pool))
        with tqdm(total=steps, desc="greedy float set", unit="op", disable=not progress) as bar:
            for _ in range(steps):
                kept = [op for op, _ in order]
                op, kl = min(((op, kl_without([*kept, op])) for op in pool if op not in kept),
                             key=int8_first)  # fmt: skip
                order.append((op, kl))
                bar.update()
    sim.set_active(ops)
    picked = {op for op, _ in order}
    return order + [(op, kl) for op, kl in alone if op not in picked]


def bisect(
    artifact: Path,
    data: str | Path,
    inputs: Any,  # debug._Inputs of the artifact's run
    info: Any,
    *,
    max_drop: float | None = None,
    fix_to: float | None = None,
    limit: int = 256,
    out: Path,
    progress: bool = True,
) -> BisectResult:
    """See the module doc. Writes ``out/<artifact name>.float.json``."""
    if (max_drop is None) == (fix_to is None):
        raise EdgevtError("give one goal: --max-drop POINTS or --fix-to COSINE.")
    if max_drop is not None and not 0 <= max_drop <= 100:
        raise EdgevtError(f"--max-drop {max_drop}: give 0 to 100 points.")
    if fix_to is not None and not 0 < fix_to < 1:
        raise EdgevtError(f"--fix-to {fix_to}: give a cosine between 0 and 1, e.g. 0.999.")
    from edgevt.artifact import ArtifactInfo
    from edgevt.io import write_json
    from edgevt.quant.onnx_qdq import file_quantized_ops
    from edgevt.targets import get_target

    plugin = get_target(info.target)
    images, labels = _images(data, info.preprocess, limit)
    labelled = bool((labels >= 0).all())
    with torch.no_grad():  # a batch at a time: memory stays bounded on 1000 images
        reference = torch.cat([inputs.fused(images[i : i + 32])
                               for i in range(0, len(images), 32)])  # fmt: skip
    sim = plugin.simulation(inputs.fused, inputs.fp32_onnx, inputs.table,
                            inputs.config if inputs.config_given else None, artifact)
    quantized = file_quantized_ops(inputs.fp32_onnx, inputs.table, inputs.config,
                                   plugin.quantization_rules(), sim.ops)  # fmt: skip
    ranking = rank_ops(sim, images[:RANK_IMAGES], reference[:RANK_IMAGES], progress, quantized)
    order = float_order(sim, images[:RANK_IMAGES], reference[:RANK_IMAGES], progress, quantized)
    ops = [op for op, _ in order]
    ref = reference.numpy()

    def measure(logits: np.ndarray) -> float:
        if fix_to is not None:
            a, b = logits.astype(np.float64), ref.astype(np.float64)
            norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
            return float(((a * b).sum(1) / np.maximum(norms, 1e-30)).mean())
        q, r = logits.argmax(1), ref.argmax(1)
        if labelled:
            return 100.0 * float((r == labels).mean() - (q == labels).mean())
        return 100.0 * float((q != r).mean())

    def met(value: float) -> bool:
        return value >= fix_to if fix_to is not None else value <= max_drop

    def run(path: Path) -> float:
        runner = plugin.runner(path)
        logits = np.concatenate([runner.infer(images[i : i + 32].numpy())
                                 for i in range(0, len(images), 32)])  # fmt: skip
        runner.deactivate()
        return measure(logits)

    checked = 0
    with tempfile.TemporaryDirectory() as tmp:

        def on_file(kept: list[str]) -> float:
            nonlocal checked
            path = Path(tmp) / f"k{len(kept)}{plugin.spec.suffix}"
            copy = ArtifactInfo.from_json(info.to_json())
            try:
                plugin.int8_variant(artifact.parent, path, inputs.table,
                                    inputs.config.keep_float(kept), copy)  # fmt: skip
            except EdgevtError:  # no int8 file this target writes with that set in float
                return -1.0 if fix_to is not None else 100.0
            checked += 1
            return run(path)

        as_given = run(artifact)  # the file itself, as exported
        best, value = [], as_given
        # The longest prefix whose file still quantizes something (beyond it lies the fp32
        # model, which no int8 export writes): the bisection's upper end.
        longest = len(ops) - 1
        while longest > 0 and not quantized(ops[:longest]):
            longest -= 1
        if not met(as_given) and longest:
            best, value = ops[:longest], on_file(ops[:longest])
            lo, hi = 1, longest - 1 if met(value) else 0
            while lo <= hi:
                mid = (lo + hi) // 2
                v = on_file(ops[:mid])
                if met(v):
                    best, value, hi = ops[:mid], v, mid - 1
                else:
                    lo = mid + 1
    goal = (f"logits cosine to fp32 >= {fix_to}" if fix_to is not None else
            f"top-1 {'drop vs labels' if labelled else 'disagreement with fp32'} <= "
            f"{max_drop} pt")  # fmt: skip
    config_path = out / f"{artifact.name}.float.json"
    out.mkdir(parents=True, exist_ok=True)
    write_json(config_path, inputs.config.keep_float(list(best)).to_dict())
    also = sorted(set(ops) - quantized(best) - set(best)) if best else []
    return BisectResult(goal, list(best), value, as_given, met(value), checked, ranking,
                        str(config_path), order, also)  # fmt: skip
