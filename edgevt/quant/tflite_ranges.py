"""Make ai-edge-quantizer's full-int8 TFLite honour the edgevt CalibrationTable.

ai-edge-quantizer calibrates by running the float .tflite and recording min/max per tensor
("QSVs"). We let it do that on the table's own calibration images (so tensors the table has no
entry for, such as LayerNorm or Softmax outputs, still get a range), then overwrite the QSVs of
every tensor the table covers with the table's range before quantizing.

Where a table key lands in the .tflite: litert-torch names tensors after their PyTorch module
scope (``Root/pkg.Sequential_stages/pkg.LevitStage_0/.../torch.nn.modules.linear.Linear_qkv;1``),
so a FULLY_CONNECTED / CONV_2D / DEPTHWISE_CONV_2D op finds its module from its weight tensor,
and the i-th BATCH_MATMUL inside a module scope is that module's ``@matmul<i>``.

TFLite's int8 kernels for RESHAPE, TRANSPOSE, SLICE, CONCATENATION... keep one scale on input and
output, so tensors joined by such ops must share a range. Where two table entries meet in one
such group (LeViT's q, k and v are slices of one qkv output) the group takes their union, and the
narrower entries are reported as not honoured, with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgevt.quant.table import CalibrationTable

WEIGHTED_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")
# ops whose int8 kernels keep their input's scale (ai-edge-quantizer's SAME_AS_*_SCALE rules)
SAME_SCALE_OPS = frozenset(
    (
        "RESHAPE", "TRANSPOSE", "SLICE", "STRIDED_SLICE", "SPLIT", "GATHER", "GATHER_ND",
        "PAD", "PADV2", "MIRROR_PAD", "MAX_POOL_2D", "AVERAGE_POOL_2D", "SPACE_TO_DEPTH",
        "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "BROADCAST_TO", "UNPACK", "PACK",
        "CONCATENATION", "SELECT", "SELECT_V2", "MAXIMUM", "REDUCE_MIN", "DYNAMIC_UPDATE_SLICE",
    )
)  # fmt: skip
# ops whose int8 output range TFLite fixes (softmax/sigmoid: scale 1/256, tanh: 1/128)
FIXED_OUTPUT_RANGES = {
    "SOFTMAX": (0.0, 255 / 256), "LOGISTIC": (0.0, 255 / 256), "TANH": (-1.0, 127 / 128),
}  # fmt: skip
# fused activations clip a conv/FC output before it is stored
ACTIVATION_CLIP = {1: (0.0, np.inf), 2: (-1.0, 1.0), 3: (0.0, 6.0)}  # RELU, RELU_N1_TO_1, RELU6


def module_scope(
    tensor_name: str, modules: set[str], wanted: set[str] | None = None
) -> str | None:
    """``Root/a.Sequential_stages/a.Stage_0/b.Linear_qkv;1`` -> ``stages.0.qkv`` if a module.

    The scope names only modules whose forward ran: a ModuleList's children appear without
    the list (HF CvT's ``CvtStage_0`` is ``encoder.stages.0``), so a part that is no child
    may be a grandchild through such a container. A tensor the converter merged carries
    several scopes joined by ";": the first that names a module of ``wanted`` (the table's
    ops of the right kind) wins; without ``wanted``, the first scope's deepest module.
    """
    found = [_resolve(loc, modules) for loc in tensor_name.split(";") if loc]
    if wanted is not None:
        return next((m for m in found if m in wanted), None)
    return found[0] if found else None


def _resolve(location: str, modules: set[str]) -> str | None:
    parts = []
    for comp in location.split("/")[1:]:
        cls_and_attr = comp.rsplit(".", 1)[-1]
        if "_" not in cls_and_attr:
            return None
        parts.append(cls_and_attr.split("_", 1)[1])
    path, deepest = "", None
    for part in parts:  # the deepest module the scope reaches
        child = f"{path}.{part}" if path else part
        if child not in modules:
            child = _through_container(path, part, modules) or child
        path = child
        if path in modules:
            deepest = path
    return deepest


def _through_container(parent: str, part: str, modules: set[str]) -> str | None:
    """``parent.<list>.part`` when exactly one such module exists (a ModuleList between)."""
    prefix = f"{parent}." if parent else ""
    hits = [m for m in modules if m.startswith(prefix) and m.endswith(f".{part}")
            and m.count(".") == prefix.count(".") + 1]  # fmt: skip
    return hits[0] if len(hits) == 1 else None


@dataclass
class TfliteOp:
    index: int
    op_type: str
    inputs: list[int]
    outputs: list[int]
    fused_activation: int = 0


def read_ops(model_t: Any) -> list[TfliteOp]:
    """The main subgraph's operators with op names (ai-edge-quantizer's flatbuffer objects)."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    graph = model_t.subgraphs[0]
    ops = []
    for i, op in enumerate(graph.operators):
        code = model_t.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        name = fu.TFL_OP_CODE_TO_NAME.get(builtin)  # the ops the quantizer knows
        op_type = name.value if name else _builtin_names().get(builtin, f"code{builtin}")
        act = getattr(op.builtinOptions, "fusedActivationFunction", 0) or 0
        ops.append(TfliteOp(i, op_type, list(op.inputs), list(op.outputs), act))
    return ops


def _builtin_names() -> dict[int, str]:
    """Every TFLite builtin op code's name (QUANTIZE, DEQUANTIZE...)."""
    from ai_edge_litert.schema_py_generated import BuiltinOperator

    return {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}


def tensors_of_ops(model_t: Any, ops: list[TfliteOp]) -> set[int]:
    """Tensors that some op of ``ops`` reads or writes."""
    return {t for op in ops for t in (*op.inputs, *op.outputs) if t >= 0}


# Ops cheap in any precision: quantizing one that sits between float ops only adds a
# QUANTIZE before it and a DEQUANTIZE after it. Data movement, and arithmetic with a constant
# (an attention scale, a bias table); arithmetic on two activations is left to the recipe:
# keeping CvT's LayerNorm x * rsqrt(var) float beside an int8 mean term took its cosine to
# fp32 from 0.943 to 0.697.
MOVE_OP_TYPES = frozenset({
    "RESHAPE", "TRANSPOSE", "SLICE", "STRIDED_SLICE", "SQUEEZE", "EXPAND_DIMS", "PAD",
    "CONCATENATION", "SPLIT", "GATHER",
})  # fmt: skip
CONSTANT_OP_TYPES = frozenset({"MUL", "ADD", "SUB"})  # glue only with a constant operand
GLUE_OP_TYPES = MOVE_OP_TYPES | CONSTANT_OP_TYPES


def ops_between_float_ops(model_t: Any, float_types: tuple[str, ...]) -> list[TfliteOp]:
    """The glue ops (reshapes, transposes, MUL/ADD/SUB by a constant) whose every input comes
    from a float op or a constant and whose every output goes only to float ops, once the
    ``float_types`` are kept float: the largest such set, chains included (softmax, reshape,
    batch matmul in LeViT's attention). In int8 each would cost a QUANTIZE and a DEQUANTIZE,
    two more operators per inference (and a thread-pool hand-off each at batch 1), for no
    int8 arithmetic."""
    graph = model_t.subgraphs[0]
    ops = read_ops(model_t)
    producer = {t: op for op in ops for t in op.outputs}
    consumers: dict[int, list[TfliteOp]] = {}
    for op in ops:
        for t in op.inputs:
            consumers.setdefault(t, []).append(op)
    constant = {i for i, t in enumerate(graph.tensors) if _is_constant(model_t, t)}
    ends = set(graph.inputs) | set(graph.outputs)
    glue = {
        op.index for op in ops if op.op_type not in float_types
        and (op.op_type in MOVE_OP_TYPES or op.op_type in CONSTANT_OP_TYPES
             and any(t in constant for t in op.inputs))
    }  # fmt: skip

    def is_float(op: TfliteOp) -> bool:
        return op.op_type in float_types or op.index in glue

    changed = True
    while changed:  # drop any op with a quantized neighbour until none is left
        changed = False
        for op in ops:
            if op.index not in glue:
                continue
            fed = [t for t in op.inputs if t >= 0 and t not in constant]
            feeds = [consumers.get(t, []) for t in op.outputs]
            keep = (
                bool(fed) and all(t in producer and is_float(producer[t]) for t in fed)
                and not ends.intersection(op.outputs)
                and all(c and all(is_float(o) for o in c) for c in feeds)
            )  # fmt: skip
            if not keep:
                glue.discard(op.index)
                changed = True
    return [op for op in ops if op.index in glue]


def tensor_name(model_t: Any, index: int) -> str:
    name = model_t.subgraphs[0].tensors[index].name
    return name.decode() if isinstance(name, bytes) else name


@dataclass
class TableMapping:
    """Which .tflite tensor each table key landed on, and the range it asks for."""

    tensor_of_key: dict[str, int] = field(default_factory=dict)
    range_of_key: dict[str, tuple[float, float]] = field(default_factory=dict)
    unmatched_ops: list[str] = field(default_factory=list)  # quantizable ops with no module
    # keys with no tensor of their own in the file, and why (the quantizer ranges it)
    unplaced: dict[str, str] = field(default_factory=dict)


def map_table(model_t: Any, table: CalibrationTable, modules: Iterable[str]) -> TableMapping:
    """Find the tensors of the table's keys among the quantizable ops of the .tflite."""
    modules = set(modules)
    mapping = TableMapping()
    matmuls_seen: dict[str, int] = {}

    def assign(key: str, tensor: int, clip: tuple[float, float] | None = None) -> None:
        r = table.activations.get(key)
        if r is None:
            return
        lo, hi = r.min, r.max
        if clip is not None:
            lo, hi = max(lo, clip[0]), min(hi, clip[1])
        mapping.tensor_of_key[key] = tensor
        mapping.range_of_key[key] = (lo, hi)

    ops = read_ops(model_t)
    before_bias = {op.outputs[0]: _biased_output(model_t, ops, op)[0] for op in ops
                   if op.op_type in WEIGHTED_OPS}  # fmt: skip
    before_bias = {t: b for t, b in before_bias.items() if t != b}
    weighted = {n for n, t in table.ops.items() if t in ("Conv2d", "Linear")}
    for op in ops:
        if op.op_type in WEIGHTED_OPS:
            module = module_scope(tensor_name(model_t, op.inputs[1]), modules, weighted)
            if module is None:
                mapping.unmatched_ops.append(f"{op.op_type} #{op.index}")
                continue
            if op.inputs[0] in before_bias and f"{module}:in0" in table.activations:
                mapping.unplaced[f"{module}:in0"] = (
                    "the converter folded the bias of the op before into this one, which reads "
                    "that op's output without its bias: the table's range does not apply there"
                )
            else:
                assign(f"{module}:in0", op.inputs[0])
            out, act = _biased_output(model_t, ops, op)
            assign(f"{module}:out", out, ACTIVATION_CLIP.get(act))
        elif op.op_type == "BATCH_MATMUL":
            module = module_scope(tensor_name(model_t, op.outputs[0]), modules)
            if module is None:
                mapping.unmatched_ops.append(f"BATCH_MATMUL #{op.index}")
                continue
            i = matmuls_seen.get(module, 0)
            matmuls_seen[module] = i + 1
            assign(f"{module}@matmul{i}:in0", op.inputs[0])
            assign(f"{module}@matmul{i}:in1", op.inputs[1])
    return mapping


def _biased_output(model_t: Any, ops: list[TfliteOp], op: TfliteOp) -> tuple[int, int]:
    """The tensor holding a conv/FC module's output, and its fused activation: the op's own
    output, or where litert-torch left the bias out of the op, the ADD's. (LeViT's downsample:
    ``proj`` comes out as FULLY_CONNECTED without bias, read by an ADD of the bias for the
    residual and by ``mlp.ln1``, into whose bias the converter folded it.)"""
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        return op.outputs[0], op.fused_activation
    graph = model_t.subgraphs[0]
    for add in (o for o in ops if op.outputs[0] in o.inputs and o.op_type == "ADD"):
        other = next((t for t in add.inputs if t != op.outputs[0]), -1)
        if other >= 0 and _is_constant(model_t, graph.tensors[other]):
            return add.outputs[0], add.fused_activation
    return op.outputs[0], op.fused_activation


# TFLite op -> the QuantConfig op type it implements
CONFIG_OP_TYPE = {
    "FULLY_CONNECTED": "Linear", "CONV_2D": "Conv2d", "DEPTHWISE_CONV_2D": "Conv2d",
    "BATCH_MATMUL": "matmul",
}  # fmt: skip


@dataclass
class OpChoice:
    scope: str  # ai-edge-quantizer's op scope: output tensor names joined by ";", then ";"
    op_type: str  # TFLite op name
    name: str  # edgevt op name (module, or module@matmul<i>)
    per_channel: bool


def choose_ops(
    model_t: Any, config: Any, modules: Iterable[str], ops: dict[str, str] | None = None
) -> list[OpChoice]:
    """The compute ops ``config`` (a QuantConfig) puts in int8, by their quantizer scope
    (``ops``: the table's ``{op: type}``, to tell a merged tensor's module)."""
    modules = set(modules)
    weighted = {n for n, t in ops.items() if t in ("Conv2d", "Linear")} if ops else None
    chosen, matmuls_seen = [], {}
    for op in read_ops(model_t):
        kind = CONFIG_OP_TYPE.get(op.op_type)
        if kind is None:
            continue
        probe = op.outputs[0] if kind == "matmul" else op.inputs[1]
        module = module_scope(tensor_name(model_t, probe), modules,
                              None if kind == "matmul" else weighted)  # fmt: skip
        if module is None:
            continue
        name = module
        if kind == "matmul":
            i = matmuls_seen.get(module, 0)
            matmuls_seen[module] = i + 1
            name = f"{module}@matmul{i}"
        setting = config.resolve(name, kind)
        if setting is None:
            continue
        scope = ";".join(tensor_name(model_t, t) for t in op.outputs if t >= 0) + ";"
        chosen.append(OpChoice(scope, op.op_type, name, setting.weights == "per_channel"))
    return chosen


def same_scale_groups(model_t: Any) -> dict[int, int]:
    """Union-find root of every activation tensor under TFLite's same-scale constraints."""
    parent: dict[int, int] = {}

    def find(t: int) -> int:
        parent.setdefault(t, t)
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    graph = model_t.subgraphs[0]
    constant = {i for i, t in enumerate(graph.tensors) if _is_constant(model_t, t)}
    for op in read_ops(model_t):
        if op.op_type not in SAME_SCALE_OPS:
            continue
        data = [t for t in op.inputs + op.outputs if t >= 0 and t not in constant]
        for t in data[1:]:
            parent[find(t)] = find(data[0])
    return {t: find(t) for t in list(parent)}


def _is_constant(model_t: Any, tensor: Any) -> bool:
    buffer = model_t.buffers[tensor.buffer] if tensor.buffer < len(model_t.buffers) else None
    return buffer is not None and buffer.data is not None and len(buffer.data) > 0


@dataclass
class RangePlan:
    qsvs: dict[str, dict[str, Any]]
    honoured: dict[str, str]  # key -> tensor name
    not_honoured: list[str]


@dataclass
class KeyGroup:
    """Table keys whose tensors TFLite gives one int8 scale (joined by same-scale ops)."""

    keys: list[str]
    tensors: list[int]  # every tensor of the group
    fixed_by: str | None  # the op type whose output range TFLite fixes, if one is in it

    def span(self, mapping: TableMapping) -> tuple[float, float]:
        """The range the group's scale is made from: the fixed one, or the keys' union."""
        if self.fixed_by is not None:
            return FIXED_OUTPUT_RANGES[self.fixed_by]
        return (min(mapping.range_of_key[k][0] for k in self.keys),
                max(mapping.range_of_key[k][1] for k in self.keys))  # fmt: skip


def key_groups(model_t: Any, mapping: TableMapping) -> list[KeyGroup]:
    """The same-scale groups the table's keys land in."""
    groups = same_scale_groups(model_t)
    wanted: dict[int, list[str]] = {}  # group root -> keys landing in it
    for key, tensor in mapping.tensor_of_key.items():
        wanted.setdefault(groups.get(tensor, tensor), []).append(key)
    members: dict[int, list[int]] = {}
    for tensor, root in groups.items():
        members.setdefault(root, []).append(tensor)
    fixed_by = {groups.get(t, t): op.op_type for op in read_ops(model_t)
                if op.op_type in FIXED_OUTPUT_RANGES for t in op.outputs}  # fmt: skip
    return [KeyGroup(keys, members.get(root, [root]), fixed_by.get(root))
            for root, keys in wanted.items()]  # fmt: skip


def apply_table(
    model_t: Any, calibrated: dict[str, dict[str, Any]], mapping: TableMapping
) -> RangePlan:
    """Overwrite the quantizer's QSVs with the table's ranges, group by group."""
    qsvs = {name: dict(v) for name, v in calibrated.items()}
    honoured: dict[str, str] = {}
    not_honoured: list[str] = []
    for group in key_groups(model_t, mapping):
        keys = group.keys
        if group.fixed_by is not None:
            not_honoured += [
                f"{key}: TFLite fixes the int8 scale of a {group.fixed_by} output" for key in keys
            ]
            continue
        lo, hi = group.span(mapping)
        for tensor in group.tensors:
            name = tensor_name(model_t, tensor)
            if name not in qsvs:
                continue
            old = qsvs[name]
            qsvs[name] = {
                **old,
                "min": np.full_like(np.asarray(old["min"], dtype=np.float32), lo),
                "max": np.full_like(np.asarray(old["max"], dtype=np.float32), hi),
            }
        for key in keys:
            k_lo, k_hi = mapping.range_of_key[key]
            if len(keys) == 1 or (np.isclose(k_lo, lo) and np.isclose(k_hi, hi)):
                honoured[key] = tensor_name(model_t, mapping.tensor_of_key[key])
            else:
                others = ", ".join(k for k in keys if k != key)
                not_honoured.append(
                    f"{key}: range [{k_lo:.4g}, {k_hi:.4g}] widened to [{lo:.4g}, {hi:.4g}] "
                    f"(one int8 scale with {others}: the same tensor, or joined by ops that "
                    "keep their input's scale)"
                )
    not_honoured += [f"{key}: {why}" for key, why in mapping.unplaced.items()]
    return RangePlan(qsvs, honoured, not_honoured)


def int8_scale(lo: float, hi: float) -> float:
    """The asymmetric int8 scale a [lo, hi] range gets (the range always spans 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    return (hi - lo) / 255.0 if hi > lo else 1.0


def check_scales(
    quantized_t: Any, honoured: dict[str, str], ranges: dict[str, tuple[float, float]]
) -> list[str]:
    """Keys whose tensor in the quantized .tflite does not carry the table's scale."""
    from ai_edge_litert import schema_py_generated as schema

    tensors = quantized_t.subgraphs[0].tensors
    by_name = {}
    for tensor in tensors:
        name = tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
        by_name[name] = tensor
    # a float tensor that feeds int8 ops goes through a QUANTIZE op: check what that makes
    quantized_as = {}
    for op in quantized_t.subgraphs[0].operators:
        code = quantized_t.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.QUANTIZE:
            quantized_as[op.inputs[0]] = tensors[op.outputs[0]]
    index_of = {id(t): i for i, t in enumerate(tensors)}
    problems = []
    for key, name in honoured.items():
        tensor = by_name.get(name)
        if tensor is not None and not _is_quantized(tensor):
            tensor = quantized_as.get(index_of[id(tensor)], tensor)
        q = getattr(tensor, "quantization", None)
        if q is None or q.scale is None or len(q.scale) == 0:
            problems.append(f"{key}: tensor {_short(name)} is not quantized")
            continue
        want = int8_scale(*ranges[key])
        got = float(np.asarray(q.scale).ravel()[0])
        if not np.isclose(got, want, rtol=1e-4):
            problems.append(f"{key}: scale {got:.6g} in the .tflite, {want:.6g} from the table")
    return problems


def _is_quantized(tensor: Any) -> bool:
    q = tensor.quantization
    return q is not None and q.scale is not None and len(q.scale) > 0


def _short(name: str) -> str:
    return re.sub(r"^.*/", "", name)
