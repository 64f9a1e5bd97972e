"""QDQ ONNX from a fused fp32 ONNX model, a CalibrationTable and a QuantConfig.

The Q/DQ insertion itself is onnxruntime's ``QDQQuantizer`` (what NVIDIA ModelOpt also builds
on); edgevt supplies the ranges (from its own observers, through the table), which nodes to
quantize (from the config), and the target's ``TargetRules`` (``edgevt.quant.rules``). The two
rule sets it is written for today:

* ONNX Runtime on CPUs: uint8 asymmetric activations, int8 symmetric weights
  (per channel, or per tensor where the config says so, op by op) in 7 bits
  (``reduce_range``; depthwise convs keep 8), int32 biases, Q/DQ on op inputs
  plus the element-wise ops whose tensors are all calibrated (CNN residual adds, ReLU6 clips),
  so ORT fuses whole MBConv blocks into QLinearConv/QLinearAdd. Why 7 bits: on x86 CPUs
  without VNNI, ORT's u8s8 kernels sum pairs of products in saturating 16-bit lanes; with full
  8-bit weights the fused EfficientNet-Lite0 lost 3.1 pt top-1 on imagenet-val1000 (kernels vs
  exact QDQ: cosine 0.898), with 7-bit weights 0.4 pt (benchmarks/int8_ptq.py). The export
  still compares ORT's fused kernels against the exact QDQ simulation and says if they part.
  Quantizing Conv outputs before their ReLU6 (instead of after the clip) spends the uint8 grid
  on values the clip discards: don't.
* TensorRT: int8 symmetric everywhere (zero point 0), per-output-channel weights, Q/DQ on
  the inputs of quantized ops only (TensorRT propagates and fuses them), float biases.

ONNX node names carry the module scope (``/stages/stages.0/blocks/blocks.0/attn/MatMul``), which
is how a node finds its table entry.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgevt.artifact import METADATA_KEY, ArtifactInfo
from edgevt.errors import EdgevtError
from edgevt.io import atomic_path
from edgevt.quant.config import QuantConfig
from edgevt.quant.rules import TargetRules
from edgevt.quant.table import CalibrationTable

QUANTIZABLE_NODES = ("Conv", "Gemm", "MatMul")


def node_scope(node_name: str) -> str:
    """Module path of an exported node: ``/blocks/blocks.0/conv/Conv`` -> ``blocks.0.conv``."""
    parts: list[str] = []
    for comp in node_name.strip("/").split("/")[:-1]:
        if parts and comp.startswith(parts[-1] + "."):
            parts[-1] = comp  # a container's scope, then its child's "container.i"
        else:
            parts.append(comp)
    return ".".join(parts)


@dataclass
class NodeMapping:
    """Which table keys each ONNX node's activation inputs and output correspond to."""

    op_of_node: dict[str, str] = field(default_factory=dict)  # node name -> op name
    inputs: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # node -> (tensor, key)
    output: dict[str, tuple[str, str]] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)  # quantizable-looking nodes with no op


def map_nodes(graph: Any, ops: dict[str, str]) -> NodeMapping:
    """Match nodes of an exported graph to the model's quantizable ops (``{name: op_type}``)."""
    mapping = NodeMapping()
    products: dict[str, int] = defaultdict(int)
    initializers = {t.name for t in graph.initializer}
    for node in graph.node:
        if node.op_type not in (*QUANTIZABLE_NODES, "Einsum"):
            continue
        scope = node_scope(node.name)
        if ops.get(scope) in ("Conv2d", "Linear") and node.op_type in QUANTIZABLE_NODES:
            mapping.op_of_node[node.name] = scope
            mapping.inputs[node.name] = [(node.input[0], f"{scope}:in0")]
            if node.op_type in ("Conv", "Gemm"):  # a MatMul's output is before the bias Add
                mapping.output[node.name] = (node.output[0], f"{scope}:out")
            continue
        name = f"{scope}@matmul{products[scope]}"
        products[scope] += 1
        if ops.get(name) == "matmul" and not any(i in initializers for i in node.input[:2]):
            mapping.op_of_node[node.name] = name
            mapping.inputs[node.name] = [(t, f"{name}:in{i}") for i, t in enumerate(node.input[:2])]
        else:
            mapping.unmapped.append(node.name)
    return mapping


@dataclass
class QdqPlan:
    """What will be quantized, and what the table or target could not honour (reported)."""

    quantized: list[str]  # op names
    kept_float: list[str]  # op names the config keeps in float
    not_honoured: list[str]  # human-readable reasons
    ranges: dict[str, tuple[float, float]]  # onnx tensor -> (min, max)
    nodes: list[str]  # ONNX node names to quantize
    # Conv/Gemm/MatMul nodes with a weight: does the config quantize it per channel?
    per_channel: dict[str, bool]
    add_elementwise: bool = True  # config op type "add"


def plan_qdq(
    proto: Any, table: CalibrationTable, config: QuantConfig, float_nodes: tuple[str, ...] = ()
) -> QdqPlan:
    """What to quantize; ``float_nodes`` (ONNX node names) stay float whatever the config."""
    ops: dict[str, str] = table.ops
    if not ops:
        raise EdgevtError(
            "the calibration table lists no ops; recreate it with `edgevt calibrate`."
        )
    mapping = map_nodes(proto.graph, ops)
    ranges: dict[str, tuple[float, float]] = {}
    quantized, kept, notes, nodes = [], [], [], []
    per_channel: dict[str, bool] = {}
    for node_name, op_name in mapping.op_of_node.items():
        setting = config.resolve(op_name, ops[op_name])
        if setting is None or node_name in float_nodes:
            kept.append(op_name)
            if node_name in float_nodes:
                notes.append(f"{op_name}: no int8 kernel without a quantized output on this "
                             "target; kept in float")  # fmt: skip
            continue
        keys = [*mapping.inputs[node_name]]
        if node_name in mapping.output:
            keys.append(mapping.output[node_name])
        missing = [k for _, k in keys if k not in table.activations]
        if missing:
            notes.append(f"{op_name}: no range for {missing[0]} in the table; kept in float")
            continue
        for tensor, key in keys:
            r = table.activations[key]
            lo, hi = ranges.get(tensor, (r.min, r.max))
            ranges[tensor] = (min(lo, r.min), max(hi, r.max))
        quantized.append(op_name)
        nodes.append(node_name)
        if ops[op_name] != "matmul":
            per_channel[node_name] = setting.weights == "per_channel"
    for node in mapping.unmapped:
        notes.append(f"{node}: no matching op in the table (left in float)")
    if not quantized and float_nodes:
        raise EdgevtError(
            "nothing this target can run in int8: the ops the config quantizes are convs between "
            "float ops, which ONNX Runtime would run in float anyway; quantize the ops around "
            "them too (e.g. Linear layers), or export for TensorRT's rules (its own target)."
        )
    if not quantized:
        raise EdgevtError(
            "nothing to quantize: the config keeps every op in float — quantize at least one op "
            "type (remove its null), or export without --int8."
        )
    add = config.resolve("add", "add") is not None
    return QdqPlan(quantized, kept, notes, ranges, nodes, per_channel, add)


def calibrated_elementwise_nodes(proto: Any, plan: QdqPlan, rules: TargetRules) -> list[str]:
    """Nodes of ``rules.calibrated_elementwise`` types whose tensors all have ranges (an Add)
    or whose output has one (a Clip/Relu, which ORT then folds into the Q's saturation)."""
    if not rules.calibrated_elementwise or not plan.add_elementwise:
        return []
    constant = {t.name for t in proto.graph.initializer}
    constant |= {n.output[0] for n in proto.graph.node if n.op_type == "Constant"}
    chosen = []
    for node in proto.graph.node:
        if node.op_type not in rules.calibrated_elementwise:
            continue
        if node.op_type == "Add":
            tensors = [t for t in node.input if t not in constant] + list(node.output)
            if len(tensors) == 3 and all(t in plan.ranges for t in tensors):
                chosen.append(node.name)
        elif node.output[0] in plan.ranges:
            chosen.append(node.name)
    return chosen


def plan_and_quantize(
    proto: Any, table: CalibrationTable, config: QuantConfig, rules: TargetRules
) -> tuple[QdqPlan, Any]:
    """The plan and the QDQ model the target really runs in int8.

    On ONNX Runtime a Conv whose output stays float (LeViT's stem: Conv -> Hardswish, CvT's
    convolutional projections) runs as DequantizeLinear + float Conv: slower than fp32 and
    less accurate. Such a conv is kept in float when its input comes from a float op too.
    When its input is the output of an int8 op (EfficientNet's conv_head after the last
    block), the Q/DQ there is what keeps that op in int8, so the conv stays quantized.
    """
    producer = {out: n.name for n in proto.graph.node for out in n.output}
    input_of = {n.name: n.input[0] for n in proto.graph.node if n.input}
    floated: tuple[str, ...] = ()
    while True:
        plan = plan_qdq(proto, table, config, floated)
        qdq = quantize_onnx(proto, plan, rules)
        if not rules.int8_conv_needs_quantized_output:
            return plan, qdq
        int8_nodes = set(plan.nodes) | set(calibrated_elementwise_nodes(proto, plan, rules))
        idle = [
            name
            for name in convs_without_quantized_output(qdq, plan)
            if producer.get(input_of[name]) not in int8_nodes
        ]
        if not idle:
            return plan, qdq
        floated += tuple(idle)


def file_quantized_ops(
    proto: Any, table: CalibrationTable, config: QuantConfig, rules: TargetRules,
    ops: Iterable[str],
) -> Callable[[Iterable[str]], set[str]]:  # fmt: skip
    """ops kept in float -> those of ``ops`` the int8 file exported with them in float
    quantizes (cached): the other ops, less on ONNX Runtime the convs ``plan_and_quantize``
    floats because they sit between float tensors (keeping EfficientNet's first depthwise conv
    in float floats the stem too). What a simulation must quantize to rank float sets."""
    from edgevt.quant.simulate import op_of

    everything = frozenset(ops)
    cache: dict[frozenset[str], set[str]] = {}

    def quantized(kept: Iterable[str]) -> set[str]:
        key = frozenset(kept)
        if key in cache:
            return cache[key]
        if not rules.int8_conv_needs_quantized_output:
            cache[key] = set(everything - key)
            return cache[key]
        try:
            tensors = quantized_tensors(proto, table, config.keep_float(sorted(key)), rules)
        except EdgevtError:  # nothing left this target would quantize
            tensors = []
        cache[key] = {op_of(k) for t in tensors for k in t.keys} & everything
        return cache[key]

    return quantized


def convs_without_quantized_output(qdq: Any, plan: QdqPlan) -> list[str]:
    """Quantized Conv nodes of ``qdq`` whose output does not go straight into QuantizeLinear
    (through a Clip or Relu, which ORT folds into the Q's saturation) on every path."""
    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in qdq.graph.node:
        for tensor in node.input:
            consumers[tensor].append(node)
    outputs = {o.name for o in qdq.graph.output}

    def quantized(tensor: str, hops: int = 1) -> bool:
        users = consumers[tensor]
        if tensor in outputs or not users:
            return False
        return all(
            u.op_type == "QuantizeLinear"
            or (hops > 0 and u.op_type in ("Clip", "Relu") and quantized(u.output[0], hops - 1))
            for u in users
        )

    chosen = set(plan.nodes)
    return [
        n.name
        for n in qdq.graph.node
        if n.name in chosen and n.op_type == "Conv" and not quantized(n.output[0])
    ]


def quantize_onnx(proto: Any, plan: QdqPlan, rules: TargetRules) -> Any:
    """Insert Q/DQ into ``proto`` (fp32, fused) per ``plan`` and ``rules``; returns a new model."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    ranges = {
        name: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
        for name, (lo, hi) in plan.ranges.items()
    }
    nodes = plan.nodes + calibrated_elementwise_nodes(proto, plan, rules)
    act_type = QuantType.QInt8 if rules.signed_activations else QuantType.QUInt8
    quantizer = QDQQuantizer(
        proto,
        True,  # per channel, except the weights ``weight_overrides`` makes per tensor
        rules.weight_reduce_range,
        QuantType.QInt8,
        act_type,
        TensorsData(CalibrationMethod.MinMax, ranges),
        nodes,
        [],
        [*QUANTIZABLE_NODES, *rules.calibrated_elementwise],
        {
            "ActivationSymmetric": rules.signed_activations,
            "WeightSymmetric": True,
            "QuantizeBias": rules.quantize_bias,
            "OpTypesToExcludeOutputQuantization": [
                t for t in QUANTIZABLE_NODES if t not in rules.quantize_outputs
            ],
            # weights are (K, N) in MatMul: output channels are axis 1
            "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
            "DedicatedQDQPair": False,
            "TensorQuantOverrides": weight_overrides(proto, plan, rules),
        },
    )
    from onnxruntime.quantization.onnx_model import ONNXModel

    model = ONNXModel(quantizer.quantize_model())
    model.topological_sort()  # the quantizer appends Q/DQ nodes after their consumers
    return model.model


def weight_overrides(proto: Any, plan: QdqPlan, rules: TargetRules) -> dict[str, list[dict]]:
    """ORT's tensor overrides for the weights that differ from its defaults (per channel on
    ORT's own axes, ``rules.weight_reduce_range`` bits). An entry without ``axis`` makes a
    weight per tensor, which is how one graph mixes granularities; the bits come from
    ``rules.weight_qmax``, the rule QAT simulates: depthwise convs run in ORT's direct int32
    kernel, which cannot saturate, so they keep all 8 bits (3x3 kernels per channel are where
    7-bit weights cost accuracy)."""
    initializers = {t.name for t in proto.graph.initializer}
    overrides: dict[str, list[dict]] = {}
    for node in proto.graph.node:
        if node.name not in plan.per_channel or node.input[1] not in initializers:
            continue
        depthwise = node.op_type == "Conv" and _groups(node) > 1
        setting: dict[str, Any] = {"reduce_range": rules.weight_qmax(depthwise) < 127}
        if plan.per_channel[node.name]:
            if setting["reduce_range"] == rules.weight_reduce_range:
                continue  # ORT's defaults
            setting["axis"] = 0  # only a depthwise Conv gets here: output channels first
        overrides[node.input[1]] = [setting]
    return overrides


def _groups(node: Any) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def write_qdq_onnx(
    fp32_path: str | Path,
    out_path: str | Path,
    table: CalibrationTable,
    config: QuantConfig,
    rules: TargetRules,
    info: ArtifactInfo,
) -> QdqPlan:
    """Quantize the fp32 artifact at ``fp32_path`` into ``out_path`` (atomically), with
    ``info`` (precision, target, what was kept in float) embedded as metadata."""
    import onnx

    proto = onnx.load(str(fp32_path))
    plan, quantized = plan_and_quantize(proto, table, config, rules)
    info.extra.update(
        {
            "quantized_ops": len(plan.quantized),
            "float_ops": plan.kept_float,
            "not_honoured": plan.not_honoured,
            "calibration": {"method": table.method, **_brief(table.source)},
        }
    )
    del quantized.metadata_props[:]
    meta = quantized.metadata_props.add()
    meta.key, meta.value = METADATA_KEY, info.to_json()
    quantized.producer_name = "edgevt"
    with atomic_path(out_path) as tmp:
        onnx.checker.check_model(quantized, full_check=True)
        onnx.save(quantized, str(tmp))
    return plan


def _brief(source: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in source.items() if k != "ops"}


@dataclass(frozen=True)
class QuantizedTensor:
    """One tensor the QDQ graph quantizes: the table keys that name it and its (union) range."""

    tensor: str
    keys: tuple[str, ...]
    min: float
    max: float
    # The module whose forward returns this tensor (an Add or ReLU6 at the end of a block):
    # quantizing there reaches every consumer, the skip connection included, as in the graph.
    producer_module: str | None = None


def quantized_tensors(proto: Any, table: CalibrationTable, config: QuantConfig,
                      rules: TargetRules) -> list[QuantizedTensor]:  # fmt: skip
    """The table keys that the exported QDQ graph really quantizes, found by building it.

    Simulations (sensitivity, QAT) must quantize exactly these: op inputs of quantized ops,
    plus the op outputs the target quantizes as well (on ONNX Runtime, conv outputs that feed
    int8 residual adds). Keys that meet one ONNX tensor share one range, as the export gives
    them one scale.
    """
    plan, qdq = plan_and_quantize(proto, table, config, rules)
    producer = {out: n.op_type for n in qdq.graph.node for out in n.output}
    qdq_nodes = {n.name: n for n in qdq.graph.node}
    q_inputs = {n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    mapping = map_nodes(proto.graph, table.ops)
    keys: dict[str, list[str]] = defaultdict(list)
    for node_name, pairs in mapping.inputs.items():
        node = qdq_nodes.get(node_name)
        if node is None:
            continue
        for i, (tensor, key) in enumerate(pairs):
            if producer.get(node.input[i]) == "DequantizeLinear" and tensor in plan.ranges:
                keys[tensor].append(key)
    for node_name, (tensor, key) in mapping.output.items():
        if node_name in qdq_nodes and tensor in q_inputs and tensor in plan.ranges:
            keys[tensor].append(key)
    return [
        QuantizedTensor(t, tuple(sorted(set(k))), *plan.ranges[t], _returning_module(proto, t))
        for t, k in keys.items()
    ]


def _returning_module(proto: Any, tensor: str) -> str | None:
    """The module scope whose forward returns ``tensor``: its producer's scope, when every
    consumer lies outside that scope."""
    producer = next((n for n in proto.graph.node if tensor in n.output), None)
    if producer is None:
        return None
    scope = node_scope(producer.name)
    consumers = [node_scope(n.name) for n in proto.graph.node if tensor in n.input]
    inside = [c for c in consumers if c == scope or c.startswith(scope + ".")]
    return scope if scope and consumers and not inside else None
