"""Reading an int8 artifact's own intermediate tensors, for `edgevt debug`.

A ``Probe`` runs one exported file so that the value of every CalibrationTable key
(``blocks.0.conv:in0``, ``...:out``) comes back beside the logits, in PyTorch's layout. Each
target that can be debugged returns one from ``Target.debug_probe``; this module holds the
shared parts and the probe of QDQ ONNX files (the ``onnx`` and ``tensorrt`` targets): ONNX
Runtime with graph optimizations off, each mapped tensor added as a graph output, so the values
are the exact Q/DQ arithmetic of the file, not a fused kernel's.
"""

from __future__ import annotations

import abc
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

_INT_RANGE = {2: (0, 255), 3: (-128, 127)}  # ONNX TensorProto UINT8 / INT8


@dataclass
class Points:
    """Where the artifact holds each table key's value."""

    value: dict[str, str]  # key -> tensor as the op sees it (after its dequantization)
    before_q: dict[str, str]  # key -> the float tensor its quantization reads, where one exists
    unmapped: list[str]
    int8: set[str] = field(default_factory=set)  # keys the file holds on an int8 grid
    # key -> (lo, hi) the file clips the value to before storing it (a conv's fused ReLU6):
    # fp32 and the simulation are compared after the same clip
    clip: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class GridParams:
    scale: float
    zero: float
    qmin: int
    qmax: int

    @property
    def range(self) -> tuple[float, float]:
        return (self.qmin - self.zero) * self.scale, (self.qmax - self.zero) * self.scale


class Probe(abc.ABC):
    """One int8 file run so that every mapped tensor is read back (see the module doc)."""

    points: Points
    grids: dict[str, GridParams]  # each int8 key's grid, as the file stores it
    runtime: str  # how the values are read, one line for the output
    # why tensors faithful step by step part from the simulation end to end
    drift: str = "rounding-boundary flips of float sums upstream, amplified"

    @abc.abstractmethod
    def run(self, batch: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The logits of ``batch`` (N, 3, H, W) and every tensor ``points`` names (float32,
        dequantized, in PyTorch's layout)."""

    def why(self, key: str) -> str | None:
        """Why the file cannot hold ``key`` as the table says, where its format dictates it
        (a fixed Softmax scale, one scale through a reshape); None if nothing forces it."""
        return None


class QdqProbe(Probe):
    """A QDQ ONNX file in ONNX Runtime without graph optimizations."""

    runtime = "ONNX Runtime, graph optimizations off (the file's exact Q/DQ arithmetic)"

    def __init__(self, path: Path, ops: dict[str, str], threads: int | None = None) -> None:
        import onnx

        self.model = onnx.load(str(path))
        self.points = qdq_points(self.model, ops)
        self.grids = qdq_grids(self.model, self.points)
        self.session, self.outputs = _session(self.model, self.points, threads)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        values = self.session.run(self.outputs, {self.session.get_inputs()[0].name: batch})
        got = dict(zip(self.outputs, values, strict=True))
        return got[self.outputs[0]], got


def qdq_points(qdq: Any, ops: dict[str, str]) -> Points:
    """The QDQ graph's tensors of every table key (see ``Points``); a key is int8 where a
    QuantizeLinear/DequantizeLinear pair carries it."""
    from edgevt.quant.onnx_qdq import map_nodes

    mapping = map_nodes(qdq.graph, ops)
    producer = {out: n for n in qdq.graph.node for out in n.output}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for n in qdq.graph.node:
        for i in n.input:
            consumers[i].append(n)
    points = Points({}, {}, mapping.unmapped)
    for pairs in mapping.inputs.values():
        for tensor, key in pairs:
            points.value[key] = tensor
            dq = producer.get(tensor)
            if dq is not None and dq.op_type == "DequantizeLinear":
                q = producer.get(dq.input[0])
                if q is not None and q.op_type == "QuantizeLinear":
                    points.before_q[key] = q.input[0]
    for tensor, key in mapping.output.values():
        q = next((n for n in consumers[tensor] if n.op_type == "QuantizeLinear"), None)
        dq = q and next(
            (n for n in consumers[q.output[0]] if n.op_type == "DequantizeLinear"), None
        )
        points.value[key] = dq.output[0] if dq else tensor
        if dq:
            points.before_q[key] = tensor
    points.int8 = set(points.before_q)
    return points


def qdq_grids(qdq: Any, points: Points) -> dict[str, GridParams]:
    """Each int8 key's grid, from its DequantizeLinear's parameters."""
    from onnx import numpy_helper

    inits = {t.name: t for t in qdq.graph.initializer}
    consts = {n.output[0]: n for n in qdq.graph.node if n.op_type == "Constant"}
    producer = {out: n for n in qdq.graph.node for out in n.output}

    def value(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in consts:
            return numpy_helper.to_array(consts[name].attribute[0].t)
        return None

    out = {}
    for key in points.int8:
        dq = producer[points.value[key]]
        scale = value(dq.input[1])
        zero = value(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
        if scale is None or scale.size != 1:
            continue
        dtype = inits[dq.input[2]].data_type if zero is not None and dq.input[2] in inits else 3
        qmin, qmax = _INT_RANGE.get(dtype, (-128, 127))
        z = float(zero.reshape(-1)[0]) if zero is not None else 0.0
        out[key] = GridParams(float(scale.reshape(-1)[0]), z, qmin, qmax)
    return out


def _session(qdq: Any, points: Points, threads: int | None):
    """ONNX Runtime without graph optimizations, every probe point an extra output."""
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    have = {o.name for o in model.graph.output}
    for tensor in dict.fromkeys([*points.value.values(), *points.before_q.values()]):
        if tensor not in have:
            model.graph.output.append(
                onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None)
            )
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(
        model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    return session, [o.name for o in session.get_outputs()]
