"""`edgevt debug`: per-tensor truth for an int8 artifact.

Three runs of the same images side by side, tensor by tensor, at the names the
CalibrationTable uses (``blocks.0.conv:in0``):

* the **artifact** itself, its intermediates read from its own runtime by its target's probe
  (``Target.debug_probe``, ``edgevt.probes``: QDQ ONNX in ONNX Runtime without graph
  optimizations, .tflite in LiteRT's built-in kernels, Core ML in the MIL interpreter);
* the **fp32 reference**, the fused model the artifact was exported from;
* edgevt's **simulation** of the target's int8 rules (``Target.simulation``: ``QuantSim``, the
  one QAT and the sensitivity search train and rank with, plus what a file format forces).

Artifact vs fp32 says where quantization noise enters (SQNR along the depth, range use and
clipping of each int8 grid, weights or activations dominating each layer); artifact vs
simulation says whether the exported file computes what the simulation promised
(*faithfulness*): every tensor below ``FAITHFUL_COSINE`` is listed with why, where known.
Statistics accumulate a few images at a time, so memory does not grow with ``limit``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgevt.errors import EdgevtError
from edgevt.probes import GridParams, Points, Probe

FAITHFUL_COSINE = 0.9999
LAYER_IMAGES = 8  # images the weights-or-activations split of each layer is measured on


def _flat(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float64).ravel()


@dataclass
class _Pair:
    """Sums for the cosine and SQNR of ``a`` against reference ``r`` over many batches."""

    ar: float = 0.0
    aa: float = 0.0
    rr: float = 0.0
    err: float = 0.0

    def add(self, a: np.ndarray, r: np.ndarray) -> None:
        """Float64 sums (``a`` and ``r`` flat float64 arrays: see ``_flat``)."""
        d = a - r
        self.ar += float(a @ r)
        self.aa += float(a @ a)
        self.rr += float(r @ r)
        self.err += float(d @ d)

    @property
    def cosine(self) -> float:
        if self.aa == 0 and self.rr == 0:
            return 1.0
        return self.ar / math.sqrt(max(self.aa * self.rr, 1e-300))

    @property
    def sqnr_db(self) -> float | None:
        """Signal over quantization noise in dB; None where the two are identical."""
        if self.err == 0:
            return None
        return 10 * math.log10(max(self.rr, 1e-300) / self.err)


@dataclass
class _Steps:
    """How far apart two tensors on one int8 grid are, counted in grid steps."""

    scale: float
    apart: int = 0  # elements a full step or more apart
    count: int = 0
    most: int = 0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        steps = np.rint(np.abs(a.astype(np.float64) - b) / self.scale)
        self.apart += int((steps >= 1).sum())
        self.count += steps.size
        self.most = max(self.most, int(steps.max(initial=0)))


@dataclass
class _Grid:
    """How the fp32 values sit on a tensor's int8 grid: range used and share clipped."""

    lo: float
    hi: float
    seen_lo: float = math.inf
    seen_hi: float = -math.inf
    clipped: int = 0
    count: int = 0

    def add(self, r: np.ndarray) -> None:
        self.seen_lo = min(self.seen_lo, float(r.min()))
        self.seen_hi = max(self.seen_hi, float(r.max()))
        self.clipped += int(((r < self.lo) | (r > self.hi)).sum())
        self.count += r.size

    @property
    def use(self) -> float:
        inside = min(self.seen_hi, self.hi) - max(self.seen_lo, self.lo)
        return max(inside, 0.0) / max(self.hi - self.lo, 1e-30)


@dataclass
class TensorDebug:
    """One mapped tensor: artifact against fp32 and against the simulation."""

    key: str
    op: str
    tensor: str  # its name in the artifact
    depth: int  # order of first use along the network
    int8: bool  # the artifact quantizes it (its value comes through a DequantizeLinear)
    cosine_fp32: float
    sqnr_fp32_db: float | None
    cosine_sim: float  # end to end: upstream drift included
    sqnr_sim_db: float | None
    # step by step: the simulation's rule applied to the file's own upstream values
    cosine_local: float | None
    range_use: float | None = None  # share of the int8 grid the fp32 values span
    clipped: float | None = None  # share of fp32 values outside the grid
    steps_apart: float | None = None  # share of values a grid step or more from the simulation
    most_steps: int | None = None  # the most grid steps any value is from the simulation


@dataclass
class LayerDebug:
    """A Conv2d/Linear op's output error from its int8 weights alone vs its int8 input alone."""

    op: str
    sqnr_weights_db: float | None
    sqnr_input_db: float | None

    @property
    def dominant(self) -> str:
        w, a = self.sqnr_weights_db, self.sqnr_input_db
        if w is None and a is None:
            return "neither"
        if w is None or (a is not None and a < w):
            return "activations"
        return "weights"


@dataclass
class Departure:
    key: str
    op: str
    cosine_sim: float
    why: str


@dataclass
class DebugResult:
    artifact: str
    target: str
    model: str
    images: int
    logits: dict[str, float | None]  # cosine / SQNR of the output, vs fp32 and vs simulation
    tensors: list[TensorDebug]
    layers: list[LayerDebug]
    departures: list[Departure]
    unmapped: list[str] = field(default_factory=list)
    bisect: dict[str, Any] | None = None  # --max-drop / --fix-to: the float set it chose
    runtime: str = ""  # how the file's intermediates were read
    drift: str = ""  # why faithful tensors still part from the simulation end to end

    @property
    def faithful_share(self) -> float:
        """Share of tensors the file computes as the simulation does, step by step."""
        if not self.tensors:
            return 1.0
        departed = {d.key for d in self.departures}
        return sum(t.key not in departed for t in self.tensors) / len(self.tensors)

    @property
    def drifted(self) -> list[str]:
        """Tensors faithful step by step whose end-to-end value still parts from the
        simulation's: float sums that land on the other side of a rounding boundary upstream
        (the runtimes add in another order), amplified by later layers."""
        departed = {d.key for d in self.departures}
        return [t.key for t in self.tensors
                if t.key not in departed and t.cosine_sim < FAITHFUL_COSINE]  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["faithful_share"] = self.faithful_share
        out["drifted"] = self.drifted
        out["faithful_cosine"] = FAITHFUL_COSINE
        for layer, d in zip(self.layers, out["layers"], strict=True):
            d["dominant"] = layer.dominant
        return out


@dataclass
class _Inputs:
    """What a debug run needs beside the artifact, found in its run directory."""

    fused: nn.Module
    table: Any  # CalibrationTable
    config: Any  # QuantConfig
    config_given: bool  # the run names one (else the target's default: TFLite's full integer)
    details: dict[str, Any]  # what the export recorded about the artifact
    fp32_onnx: Any  # onnx.ModelProto


def _run_inputs(artifact: Path, reference: Path | None, info) -> _Inputs:
    """The fused model, table, config and fp32 graph the artifact was exported from."""

    from edgevt.fused import load_fused
    from edgevt.quant.config import QuantConfig
    from edgevt.quant.table import CalibrationTable
    from edgevt.run import MANIFEST, read_manifest

    run = artifact.parent
    if not (run / MANIFEST).is_file():
        raise EdgevtError(
            f"{artifact} is not in an edgevt run directory (no {MANIFEST} beside it); debug "
            "needs the run's fused.pt, calibration.json and quant config: pass the file inside "
            "the -o folder `edgevt export` wrote."
        )
    record = _record(read_manifest(run), artifact.name)
    files = record.get("files", {}) if record else {}
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise EdgevtError(
            f"{run / MANIFEST}: the record of {artifact.name} is damaged (its files are not "
            "names) — export the run again."
        )
    table_path = run / files.get("calibration", "calibration.json")
    if not table_path.is_file():
        raise EdgevtError(
            f"{run} has no calibration table ({table_path.name}) for {artifact.name}; "
            "re-export it with --int8 into this run."
        )
    table = CalibrationTable.load(table_path)
    config = QuantConfig.load(run / files["config"]) if files.get("config") else QuantConfig()
    reference = reference or run / "fused.pt"
    if not Path(reference).is_file():
        raise EdgevtError(
            f"no fused fp32 model at {reference}; pass --reference fused.pt (the one the "
            "artifact was exported from)."
        )
    fused, fused_info = load_fused(reference)
    if fused_info.model != info.model:
        raise EdgevtError(
            f"--reference {reference} holds {fused_info.model!r}, the artifact {info.model!r}; "
            "pass the fused.pt of the artifact's own run."
        )
    fp32 = _fp32_graph(run, fused, fused_info)
    details = record.get("details") if record else None
    return _Inputs(fused.eval(), table, config, bool(files.get("config")),
                   details if isinstance(details, dict) else {}, fp32)  # fmt: skip


def _record(manifest: dict[str, Any], name: str) -> dict[str, Any] | None:
    for stage in manifest["stages"].values():
        for r in stage.get("results", {}).get("artifacts", []):
            if isinstance(r, dict) and r.get("file") == name:
                return r
    return None


def _fp32_graph(run: Path, fused: nn.Module, info) -> Any:
    """The run's fp32 ONNX (what the int8 graph was quantized from), or one exported now."""
    import tempfile

    import onnx

    from edgevt.targets.onnx import export_onnx

    if (run / "model.onnx").is_file():
        try:
            return onnx.load(str(run / "model.onnx"))
        except Exception as exc:  # protobuf's DecodeError and others on a damaged file
            raise EdgevtError(
                f"{run / 'model.onnx'} (the fp32 file the int8 one was made from) is not a "
                f"readable ONNX model ({type(exc).__name__}) — export the run again."
            ) from exc
    with tempfile.TemporaryDirectory() as tmp:
        info.target, info.precision = "onnx", "fp32"
        return onnx.load(str(export_onnx(fused, info, Path(tmp) / "model.onnx")))


def _sim_grid(sim: Any, key: str) -> GridParams | None:
    """The grid the simulation quantizes ``key`` on, None where it does not."""
    from edgevt.quant.simulate import activation_qparams

    i = sim.group.get(key)
    if i is None:
        return None
    lo, hi = (float(t[i].detach()) for t in sim.ranges())
    return GridParams(*activation_qparams(lo, hi, sim.signed))


def _same_grid(a: GridParams, b: GridParams) -> bool:
    """The same int8 grid, whatever integer type stores it (int8 zero point -4 is uint8 124);
    a symmetric grid may end at -127 or -128."""
    (a_lo, a_hi), (b_lo, b_hi) = a.range, b.range
    return (math.isclose(a.scale, b.scale, rel_tol=1e-4) and abs(a_hi - b_hi) < 0.5 * a.scale
            and abs(a_lo - b_lo) < 1.01 * a.scale)  # fmt: skip


def _capture(model: nn.Module, images: torch.Tensor) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The fp32 model's logits and the value at every table key (inputs and op outputs)."""
    from edgevt.quant.calibrate import OpTracer

    values: dict[str, np.ndarray] = {}

    def on_op(op, inputs, output) -> None:
        for key, x in zip(op.input_keys, inputs, strict=True):
            values.setdefault(key, x.detach().numpy().copy())
        if isinstance(output, torch.Tensor):
            values.setdefault(op.output_key, output.detach().numpy().copy())

    with torch.no_grad(), OpTracer(model, on_op=on_op):
        logits = model(images).numpy()
    return logits, values


def _simulate(sim: Any, images: torch.Tensor) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    values: dict[str, np.ndarray] = {}

    def observe(key: str, x: torch.Tensor) -> None:
        values.setdefault(key, x.detach().numpy().copy())

    sim.observe = observe
    try:
        with torch.no_grad():
            logits = sim(images).numpy()
    finally:
        sim.observe = None
    return logits, values


def _layer_errors(modules: dict[str, nn.Module], sim: Any, fp32: dict[str, np.ndarray],
                  sums, cache: dict[str, torch.Tensor]) -> None:  # fmt: skip
    """Each quantized Conv2d/Linear (of the fp32 model) on its fp32 input: output with int8
    weights only, and with the simulated int8 input only, against the fp32 output."""
    from edgevt.quant.simulate import fake_quant_weight

    for name, (qmax, per_channel) in sim.weight_ops.items():
        x, key_out = fp32.get(f"{name}:in0"), f"{name}:out"
        if x is None or key_out not in fp32:
            continue
        module = modules[name]
        w = module.weight.detach()
        if name not in cache:
            cache[name] = fake_quant_weight(w, qmax, per_channel)
        wq = cache[name]
        xt = torch.from_numpy(x)
        xq = sim.quantize_key(f"{name}:in0", xt)
        with torch.no_grad():
            ref = torch.from_numpy(fp32[key_out])
            y_w = _apply(module, xt, wq)
            y_a = _apply(module, xq, w)
        r = _flat(ref.numpy())
        sums[name][0].add(_flat(y_w.numpy()), r)
        sums[name][1].add(_flat(y_a.numpy()), r)


def _window(got: tuple[int, ...], want: tuple[int, ...]) -> tuple[slice, ...] | None:
    """The part of an (N, C, H, W) tensor the graph padded (a conv's input with TF "same"
    padding, smaller half before) that is the unpadded tensor; None if not such a one."""
    if len(got) != 4 or got[:2] != want[:2] or got == want:
        return None
    if any(g < w or g - w > 4 for g, w in zip(got[2:], want[2:], strict=True)):
        return None
    sizes = zip(got[2:], want[2:], strict=True)
    return (slice(None), slice(None), *(slice((g - w) // 2, (g - w) // 2 + w) for g, w in sizes))


def _unpadded(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A conv (timm's Conv2dSame too) on an input its graph already padded (a Pad op)."""
    return torch.nn.functional.conv2d(
        x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups
    )


def _apply(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The module's own forward (its padding too: timm's Conv2dSame) with another weight."""
    return torch.func.functional_call(module, {"weight": weight}, (x,), strict=False)


class _Tally:
    """The statistics of one debug run, accumulated a batch at a time."""

    def __init__(self, points: Points, grids: dict[str, GridParams], sim: Any,
                 fused: nn.Module) -> None:  # fmt: skip
        self.points, self.grids, self.sim = points, grids, sim
        self.modules = dict(sim.model.named_modules())  # weights fake-quantized as simulated
        self.fp32_modules = dict(fused.named_modules())
        self._weights: dict[str, torch.Tensor] = {}  # fake-quantized fp32 weights, made once
        self.vs_fp32: dict[str, _Pair] = defaultdict(_Pair)
        self.vs_sim: dict[str, _Pair] = defaultdict(_Pair)
        self.local: dict[str, _Pair] = defaultdict(_Pair)
        self.steps = {k: _Steps(g.scale) for k, g in grids.items()}
        self.grid = {k: _Grid(*g.range) for k, g in grids.items()}
        self.layers: dict[str, tuple[_Pair, _Pair]] = defaultdict(lambda: (_Pair(), _Pair()))
        self.logits_fp32, self.logits_sim = _Pair(), _Pair()
        self.order: dict[str, int] = {}
        self.skipped: dict[str, str] = {}
        self.images = 0

    def add(self, got: dict[str, np.ndarray], logits: np.ndarray, ref_logits: np.ndarray,
            ref: dict[str, np.ndarray], sim_logits: np.ndarray,
            simulated: dict[str, np.ndarray]) -> None:  # fmt: skip
        self.logits_fp32.add(_flat(logits), _flat(ref_logits))
        self.logits_sim.add(_flat(logits), _flat(sim_logits))
        for key in ref:
            self.order.setdefault(key, len(self.order))
        for key, tensor in self.points.value.items():
            if key not in ref or key in self.skipped:
                continue
            a, r, s = got[tensor], ref[key], simulated.get(key, ref[key])
            if a.shape != r.shape and a.size == r.size and a.shape[-1] == r.shape[-1]:
                a = a.reshape(r.shape)  # a Linear's tokens flattened to rows in the file
            window = _window(a.shape, r.shape)
            if a.shape != r.shape and window is None:
                self.skipped[key] = (f"{tensor} is {list(a.shape)} in the file, "
                                     f"{list(r.shape)} in PyTorch")
                continue
            stored, a = a, a[window] if window else a
            if key in self.points.clip:  # the file's fused activation: compare after it
                r, s = np.clip(r, *self.points.clip[key]), np.clip(s, *self.points.clip[key])
            a64 = _flat(a)
            self.vs_fp32[key].add(a64, _flat(r))
            self.vs_sim[key].add(a64, _flat(s))
            local = self._local(key, got, stored)
            if local is not None and window and local.shape == stored.shape:
                local = local[window]
            if local is not None and local.shape == a.shape:
                self.local[key].add(a64, _flat(local))
            if key in self.grid:
                self.grid[key].add(r)
                self.steps[key].add(a, s)
        if self.images < LAYER_IMAGES:  # a stable ranking needs few images; it costs 2 passes
            _layer_errors(self.fp32_modules, self.sim, ref, self.layers, self._weights)
        self.images += len(logits)

    def _local(self, key: str, got: dict[str, np.ndarray], value: np.ndarray):
        """What the simulation computes for ``key`` from the file's own values one step
        upstream: the file's float tensor quantized by the simulation's rule, or the op run
        with the simulation's weights on the file's own input. Upstream drift cancels out,
        so this is the file's faithfulness to the simulation, step by step. An int8 tensor
        with no float tensor before it (an int8 op's output in a full-integer file) is put
        on the simulation's grid: the same values come back when the grids agree."""
        op, slot = key.rsplit(":", 1)
        if slot == "out":
            x = got.get(self.points.value.get(f"{op}:in0", ""))
            module = self.modules.get(op)
            if x is None or module is None:
                return None
            with torch.no_grad():
                y = module(torch.from_numpy(x))
                if y.shape != value.shape and isinstance(module, nn.Conv2d):
                    y = _unpadded(module, torch.from_numpy(x))  # the file padded the input
            if key in self.points.clip:
                y = y.clamp(*self.points.clip[key])
            if key not in self.points.int8:
                return y.numpy()
            return self.sim.quantize_key(self._grid_key(key), y).numpy()
        if key in self.points.before_q:
            x = torch.from_numpy(got[self.points.before_q[key]])
            return self.sim.quantize_key(key, x).numpy()
        if key in self.points.int8 and key in self.sim.group:
            return self.sim.quantize_key(key, torch.from_numpy(value)).numpy()
        return None

    def _grid_key(self, key: str) -> str:
        """The key whose simulated grid the file's tensor at ``key`` is stored on: its own, or
        (an op output the simulation quantizes only where it is read) its reader's."""
        if key in self.sim.group:
            return key
        tensor = self.points.value[key]
        return next((k for k, t in self.points.value.items()
                     if t == tensor and k in self.sim.group), key)  # fmt: skip

    def tensors(self) -> list[TensorDebug]:
        out = []
        for key in sorted(self.vs_fp32, key=lambda k: self.order[k]):
            grid, steps = self.grid.get(key), self.steps.get(key)
            local = self.local.get(key)
            out.append(TensorDebug(
                key, key.rsplit(":", 1)[0], self.points.value[key], self.order[key],
                key in self.points.int8, self.vs_fp32[key].cosine, self.vs_fp32[key].sqnr_db,
                self.vs_sim[key].cosine, self.vs_sim[key].sqnr_db,
                local.cosine if local else None,
                grid.use if grid else None,
                grid.clipped / max(grid.count, 1) if grid else None,
                steps.apart / max(steps.count, 1) if steps else None,
                steps.most if steps else None,
            ))  # fmt: skip
        return out


def _check_artifact(artifact: Path, data: str | Path, limit: int, batch_size: int):
    """The artifact's ArtifactInfo, once every argument is known to be usable."""
    from edgevt.data.imagenet import no_images_message
    from edgevt.targets import (
        all_targets,
        artifact_name,
        get_target,
        read_artifact_info,
        target_for_path,
    )

    if not artifact.exists():
        raise EdgevtError(f"artifact {artifact} does not exist — check the path.")
    if limit < 1 or batch_size < 1:
        raise EdgevtError("--limit and --batch-size must be at least 1.")
    if not Path(data).is_dir():
        raise EdgevtError(no_images_message("--data", data))
    if target_for_path(artifact) is None:
        raise EdgevtError(f"{artifact} is not an artifact edgevt knows (see `edgevt targets`).")
    info = read_artifact_info(artifact)
    target = get_target(info.target)
    if not target.supports_debug:
        readable = [n for n, t in all_targets().items() if t.supports_debug]
        raise EdgevtError(
            f"edgevt debug reads the intermediates of {', '.join(readable)} files, not "
            f"{info.target} ones yet; debug the same run's --target onnx int8 file, which "
            "carries the same table."
        )
    int8 = target.spec.int8_precision
    if info.precision != int8:
        raise EdgevtError(
            f"{artifact.name} is {info.precision}, not {int8}: there is no activation "
            f"quantization to debug; pass the run's {artifact_name(target.spec, int8)}."
        )
    return info


def debug_artifact(
    artifact: str | Path,
    data: str | Path,
    *,
    limit: int = 32,
    reference: str | Path | None = None,
    batch_size: int = 4,
    threads: int | None = None,
    progress: bool = True,
) -> DebugResult:
    """Compare an int8 artifact's intermediates with fp32 and with edgevt's simulation of its
    target (see the module doc); ``limit`` images of ``data``, ``batch_size`` at a time."""
    artifact = Path(artifact)
    info = _check_artifact(artifact, data, limit, batch_size)
    inputs = _run_inputs(artifact, Path(reference) if reference else None, info)
    return _compare(artifact, data, info, inputs, limit, batch_size, threads, progress)


def _compare(artifact: Path, data: str | Path, info: Any, inputs: _Inputs, limit: int,
             batch_size: int, threads: int | None, progress: bool) -> DebugResult:  # fmt: skip
    from tqdm import tqdm

    from edgevt.data.imagenet import no_images_message, open_dataset
    from edgevt.targets import get_target

    target = get_target(info.target)
    modules = [name for name, _ in inputs.fused.named_modules()]
    probe = target.debug_probe(artifact, inputs.table, modules, inputs.details, threads)
    if not probe.points.value:
        raise EdgevtError(f"{artifact.name}: no tensor maps to the calibration table's ops.")
    sim = target.simulation(inputs.fused, inputs.fp32_onnx, inputs.table,
                            inputs.config if inputs.config_given else None, artifact)
    dataset = open_dataset(data, require_labels=False).subset(limit)
    if len(dataset) == 0:
        raise EdgevtError(no_images_message("--data", data))
    tally = _Tally(probe.points, probe.grids, sim, inputs.fused)
    with tqdm(total=len(dataset), desc="debug", unit="img", disable=not progress) as bar:
        for batch, _ in dataset.batches(info.preprocess, batch_size):
            images = torch.from_numpy(batch)
            ref_logits, ref = _capture(inputs.fused, images)
            sim_logits, simulated = _simulate(sim, images)
            logits, got = probe.run(batch)
            tally.add(got, logits, ref_logits, ref, sim_logits, simulated)
            bar.update(len(batch))
    tensors = tally.tensors()
    return DebugResult(
        str(artifact), info.target, info.model, tally.images,
        {"cosine_fp32": tally.logits_fp32.cosine, "sqnr_fp32_db": tally.logits_fp32.sqnr_db,
         "cosine_sim": tally.logits_sim.cosine, "sqnr_sim_db": tally.logits_sim.sqnr_db},
        tensors, [LayerDebug(op, w.sqnr_db, a.sqnr_db) for op, (w, a) in tally.layers.items()],
        _departures(tensors, sim, probe),
        probe.points.unmapped + [f"{k}: {why}" for k, why in tally.skipped.items()],
        runtime=probe.runtime, drift=probe.drift,
    )  # fmt: skip


def faithful(t: TensorDebug, simulated: set[str] | None = None) -> bool:
    """The file computes this tensor as the simulation would from the same upstream values:
    step by step where it can be recomputed, else both quantize it or neither does."""
    if t.cosine_local is not None:
        return t.cosine_local >= FAITHFUL_COSINE
    return simulated is None or (t.key in simulated) == t.int8


def _departures(tensors: list[TensorDebug], sim: Any, probe: Probe) -> list[Departure]:
    """Every tensor the file computes otherwise than the simulation, with why where known."""
    simulated = {k for t in sim.tensors for k in t.keys}
    # an op output the simulation quantizes where it is read: the same tensor in the file
    value = probe.points.value
    simulated |= {k for k in value if any(value[j] == value[k] for j in simulated if j in value)}
    out: list[Departure] = []
    for t in tensors:
        if faithful(t, simulated):
            continue
        file_grid, sim_grid = probe.grids.get(t.key), _sim_grid(sim, t.key)
        forced = probe.why(t.key)
        if forced:
            why = forced
        elif t.int8 and t.key not in simulated:
            why = "the file quantizes this tensor, the simulation does not (an exporter rule)"
        elif not t.int8 and t.key in simulated:
            why = "the simulation quantizes this tensor, the file keeps it in float"
        elif file_grid and sim_grid and not _same_grid(file_grid, sim_grid):
            lo, hi = file_grid.range
            why = (f"the file's int8 grid (scale {file_grid.scale:.4g}, [{lo:.4g}, {hi:.4g}]) "
                   f"is not the table's (scale {sim_grid.scale:.4g}, [{sim_grid.range[0]:.4g}, "
                   f"{sim_grid.range[1]:.4g}]): an exporter wrote another range")  # fmt: skip
        elif t.key.endswith(":out"):
            why = ("the op's output from the file's own input differs: its weights or bias are "
                   "quantized otherwise than the simulation's rule (bits, per-channel)")
        else:
            why = "unexplained: the file rounds or clips this tensor otherwise"
        out.append(Departure(t.key, t.op, t.cosine_local or t.cosine_sim, why))
    return out


def format_table(result: DebugResult, top: int | None = None) -> str:
    """The per-tensor table (depth order) as aligned text, and the faithfulness summary."""

    def db(v: float | None) -> str:
        return "exact" if v is None else f"{v:6.1f}"

    rows = [("tensor", "int8", "SQNR fp32 dB", "cos sim step", "cos sim e2e", "grid use",
             "clipped")]  # fmt: skip
    for t in result.tensors[:top] if top else result.tensors:
        rows.append((
            t.key, "yes" if t.int8 else "-", db(t.sqnr_fp32_db),
            "-" if t.cosine_local is None else f"{t.cosine_local:.6f}", f"{t.cosine_sim:.6f}",
            "-" if t.range_use is None else f"{100 * t.range_use:5.1f} %",
            "-" if t.clipped is None else f"{100 * t.clipped:.3f} %",
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lg = result.logits
    lines.append(
        f"logits: SQNR vs fp32 {db(lg['sqnr_fp32_db'])} dB, cosine vs fp32 "
        f"{lg['cosine_fp32']:.6f}, vs simulation {lg['cosine_sim']:.6f}"
    )
    faithful_n = len(result.tensors) - len(result.departures)
    lines.append(
        f"faithful to the simulation step by step (cosine >= {FAITHFUL_COSINE}): {faithful_n} "
        f"of {len(result.tensors)} tensors ({100 * result.faithful_share:.1f} %)"
    )
    if result.drifted:
        lines.append(
            f"  {len(result.drifted)} of them drift end to end (first: {result.drifted[0]}): "
            f"{result.drift}; not a rule mismatch"
        )
    for d in result.departures:
        lines.append(f"  departs: {d.key} (cosine {d.cosine_sim:.6f}): {d.why}")
    if result.bisect:
        b = result.bisect
        kept = ", ".join(b["kept_float"]) or "none"
        also = b.get("also_float") or []
        if also:  # the target's own rules float these with them
            kept += f"; the file also keeps {', '.join(also)} in float"
        lines.append(
            f"goal {b['goal']}: {'met' if b['met'] else 'NOT met'} with {len(b['kept_float'])} "
            f"ops in float ({kept}); measured on exported files: {b['measured']:.4g} (as "
            f"exported: {b['as_given']:.4g}; {b['files_checked']} files checked); "
            f"config: {b['config']}"
        )
    worst = sorted(
        (x for x in result.layers if x.sqnr_weights_db is not None),
        key=lambda x: min(x.sqnr_weights_db or 1e9, x.sqnr_input_db or 1e9),
    )[:5]
    if worst:
        lines.append("noisiest layers (output SQNR, int8 weights only / int8 input only):")
        for x in worst:
            lines.append(
                f"  {x.op}: {db(x.sqnr_weights_db)} / {db(x.sqnr_input_db)} dB -> {x.dominant}"
            )
    return "\n".join(lines)


def debug(
    artifact: str | Path,
    data: str | Path,
    *,
    limit: int = 32,
    reference: str | Path | None = None,
    out: str | Path | None = None,
    batch_size: int = 4,
    threads: int | None = None,
    max_drop: float | None = None,
    fix_to: float | None = None,
    bisect_images: int = 256,
    progress: bool = True,
) -> tuple[DebugResult, Path]:
    """``debug_artifact``, its result written to ``out`` (a folder; default the artifact's run
    directory's ``debug/``) as ``<artifact name>.json`` and ``.html``; returns the result and
    the JSON's path."""
    from edgevt.debug_page import render
    from edgevt.io import atomic_path, write_json
    from edgevt.run import run_lock

    artifact = Path(artifact)
    folder = Path(out) if out is not None else artifact.parent / "debug"
    if folder.exists() and not folder.is_dir():
        raise EdgevtError(f"-o {folder} is a file, not a folder; choose another -o.")
    path = folder / f"{artifact.name}.json"
    for target in (path, path.with_suffix(".html")):  # both or neither
        if target.is_dir():
            raise EdgevtError(f"{target} is a folder, not a file; remove it or choose another -o.")
    if max_drop is not None and fix_to is not None:
        raise EdgevtError("give one goal: --max-drop POINTS or --fix-to COSINE, not both.")
    info = _check_artifact(artifact, data, limit, batch_size)
    inputs = _run_inputs(artifact, Path(reference) if reference else None, info)
    result = _compare(artifact, data, info, inputs, limit, batch_size, threads, progress)
    if max_drop is not None or fix_to is not None:  # the same run's inputs, read once
        from edgevt.debug_bisect import bisect

        result.bisect = bisect(
            artifact, data, inputs, info, max_drop=max_drop, fix_to=fix_to,
            limit=bisect_images, out=folder, progress=progress,
        ).to_dict()  # fmt: skip

    def write() -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path.with_suffix(".html")) as tmp:
            tmp.write_text(render(result))
        write_json(path, result.to_dict())

    if out is None:  # inside the run directory: one writer at a time
        with run_lock(artifact.parent):
            write()
    else:
        write()
    return result, path
