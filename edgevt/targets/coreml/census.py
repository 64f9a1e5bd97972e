"""The op census of a Core ML package: what its program computes, and in which precision.

``census(path)`` counts ops and says, per conv/linear/matmul, whether its weight is int8 and
whether each activation input arrives through a quantize -> dequantize pair: the structural
check every Core ML export gets, on any OS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgevt.errors import EdgevtError

COMPUTE_OPS = ("conv", "linear", "matmul")
QUANT_WEIGHT_OPS = ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale")


def _spec_ops(path: str | Path):
    from edgevt.targets.coreml.mil_interpreter import load_spec

    spec, _ = load_spec(path)
    if spec.WhichOneof("Type") != "mlProgram":
        raise EdgevtError(f"{path} is not an ML Program package.")
    func = spec.mlProgram.functions["main"]
    return spec, list(func.block_specializations[func.opset].operations)


def census(path: str | Path) -> dict[str, Any]:
    """What a package's program computes and how: op counts and, per conv/linear/matmul,
    whether its weight is int8 (a constexpr dequantization op) and whether each activation
    input arrives through a quantize -> dequantize pair.

    Keys: ``ops`` (op type -> count), ``compute_ops``, ``int8_weights``, ``float_weights``
    (op names), ``int8_activations``, ``float_activations`` (``op.input``), ``int8_ops``
    (all inputs int8), ``float_ops`` (op names with any float input), ``activation_scales``
    (``op.input`` -> scale of its dequantize).
    """
    _, ops = _spec_ops(path)
    producer: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for op in ops:
        counts[op.type] = counts.get(op.type, 0) + 1
        for o in op.outputs:
            producer[o.name] = op
    result: dict[str, Any] = {
        "ops": counts,
        "compute_ops": 0,
        "int8_weights": 0,
        "float_weights": [],
        "int8_activations": 0,
        "float_activations": [],
        "int8_ops": 0,
        "float_ops": [],
        "activation_scales": {},
    }
    for op in ops:
        if op.type not in COMPUTE_OPS:
            continue
        name = op.outputs[0].name
        result["compute_ops"] += 1
        all_int8 = True
        for key in ("x", "y", "weight"):
            source = _input_op(op, key, producer)
            if source is _MISSING:
                continue
            if source is None or source.type == "const" or source.type.startswith("constexpr_"):
                if source is not None and source.type in QUANT_WEIGHT_OPS:
                    result["int8_weights"] += 1
                else:
                    result["float_weights"].append(name)
                    all_int8 = False
                continue
            if source.type == "dequantize" and _input_type(source, "input", producer) == "quantize":
                result["int8_activations"] += 1
                scale = _const_arg(source, "scale", producer)
                if scale is not None and np.size(scale) == 1:
                    result["activation_scales"][f"{name}.{key}"] = float(np.asarray(scale))
            else:
                result["float_activations"].append(f"{name}.{key}")
                all_int8 = False
        if all_int8:
            result["int8_ops"] += 1
        else:
            result["float_ops"].append(name)
    return result


_MISSING = object()


def _input_op(op, key: str, producer: dict[str, Any]):
    """The op producing input ``key`` (None for an immediate value), or _MISSING."""
    if key not in op.inputs:
        return _MISSING
    binding = op.inputs[key].arguments[0]
    if binding.WhichOneof("binding") == "value":
        return None
    return producer.get(binding.name)


def _input_type(op, key: str, producer: dict[str, Any]) -> str | None:
    source = _input_op(op, key, producer)
    return None if source is None or source is _MISSING else source.type


def _const_arg(op, key: str, producer: dict[str, Any]):
    from edgevt.targets.coreml.mil_interpreter import BlobReader, decode_value

    if key not in op.inputs:
        return None
    binding = op.inputs[key].arguments[0]
    if binding.WhichOneof("binding") == "value":
        return decode_value(binding.value, BlobReader(None))
    source = producer.get(binding.name)
    if source is not None and source.type == "const":
        val = source.attributes["val"]
        if val.WhichOneof("value") == "immediateValue":
            return decode_value(val, BlobReader(None))
    return None


def float_ops_not_asked(counted: dict[str, Any], precision: str) -> list[str]:
    """MIL compute ops that ``precision`` quantizes but that ``counted`` (a census) shows in
    float: a float weight (w8, w8a8) or a float activation input (w8a8)."""
    if precision == "w8":
        return sorted(set(counted["float_weights"]))
    if precision == "w8a8":
        return sorted(set(counted["float_ops"]))
    return []


