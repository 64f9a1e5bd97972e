"""`edgevt debug` for .tflite files: every table key's tensor read back from LiteRT, and the
simulation of what a full-integer .tflite does to the table.

LiteRT keeps every intermediate tensor when asked (``experimental_preserve_all_tensors``), but
only for the ops it runs itself: XNNPACK fuses and discards them, so the probe runs LiteRT's
built-in int8 kernels (the reference for XNNPACK's, which edgevt's export check compares).

Table keys land on tensors as the int8 export placed the table's ranges
(``edgevt.quant.tflite_ranges.map_table``); a conv input padded in the graph is read before
its PAD. Conv tensors are NHWC in the file; they come back NCHW. A conv's fused activation
(RELU6) clips its output before the int8 store, so that key is compared after the same clip.

The simulation (``litert_simulation``) is the QDQ one of LiteRT's rules plus what the format
forces: tensors joined by reshape-like ops share one scale (the union of their table ranges),
a Softmax output has TFLite's fixed grid, and every int8 op's output is stored on its grid.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np

from edgevt.probes import GridParams, Points, Probe
from edgevt.quant import tflite_ranges as tr

CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")
PAD_OPS = ("PAD", "PADV2")  # litert-torch pads a conv's input in the graph (TF "same" too)


class TfliteProbe(Probe):
    runtime = "LiteRT built-in int8 kernels (no XNNPACK), every tensor preserved"
    drift = ("rounding-boundary flips upstream, amplified, and the tensors outside the table "
             "(LayerNorm, GELU, Softmax inputs, residual sums) that TFLite stores in int8 on "
             "ranges of its own")

    def __init__(self, path: Path, table: Any, modules: list[str], threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
        from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

        model_t = fu.read_model(Path(path))
        mapping = tr.map_table(model_t, table, modules)
        self.interpreter = Interpreter(
            model_path=str(path), num_threads=threads, experimental_preserve_all_tensors=True,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )  # fmt: skip
        self.interpreter.allocate_tensors()
        self.details = {d["index"]: d for d in self.interpreter.get_tensor_details()}
        ops = tr.read_ops(model_t)
        self._nhwc = {t for op in ops if op.op_type in CONV_OPS
                      for t in (op.inputs[0], op.outputs[0])}  # fmt: skip
        producer = {t: op for op in ops for t in op.outputs}
        self.points = Points({}, {}, list(mapping.unmatched_ops))
        self.points.unmapped += [f"{key}: {why}" for key, why in mapping.unplaced.items()]
        self.grids: dict[str, GridParams] = {}
        self._tensor: dict[str, int] = {}
        for key, index in mapping.tensor_of_key.items():
            pad = producer.get(index)
            if pad is not None and pad.op_type in PAD_OPS:  # the conv's input before its pad
                index = pad.inputs[0]
                self._nhwc.add(index)
            name = self._name(index)
            self.points.value[key] = name
            self._tensor[name] = index
            if self._quantized(index):
                scale, zero = self._qparams(index)
                self.points.int8.add(key)
                self.grids[key] = GridParams(scale, zero, -128, 127)
                op = producer.get(index)
                if op is not None and op.op_type == "QUANTIZE":
                    self.points.before_q[key] = self._name(op.inputs[0])
                    self._tensor[self._name(op.inputs[0])] = op.inputs[0]
            op = producer.get(index)
            clip = tr.ACTIVATION_CLIP.get(op.fused_activation) if op else None
            if key.endswith(":out") and clip is not None:
                self.points.clip[key] = clip
        self._why = _reasons(model_t, mapping, ops)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def _name(self, index: int) -> str:
        return f"{re.sub(r'^.*/', '', self.details[index]['name'])} (#{index})"

    def _quantized(self, index: int) -> bool:
        return self.details[index]["dtype"] in (np.int8, np.uint8)

    def _qparams(self, index: int) -> tuple[float, float]:
        q = self.details[index]["quantization_parameters"]
        return float(q["scales"][0]), float(q["zero_points"][0])

    def _read(self, index: int) -> np.ndarray:
        x = self.interpreter.get_tensor(index)
        if self._quantized(index):
            scale, zero = self._qparams(index)
            x = (x.astype(np.float32) - zero) * scale
        x = np.asarray(x, dtype=np.float32)
        if index in self._nhwc and x.ndim == 4:
            x = x.transpose(0, 3, 1, 2)
        return x

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        interp, inp = self.interpreter, self.input
        rows: list[np.ndarray] = []
        per_image: dict[str, list[np.ndarray]] = {name: [] for name in self._tensor}
        for image in batch:  # converted with batch 1
            x = image[None]
            if inp["dtype"] != np.float32:
                scale, zero = inp["quantization"]
                x = np.clip(np.round(x / scale) + zero, -128, 127).astype(inp["dtype"])
            interp.set_tensor(inp["index"], x)
            interp.invoke()
            rows.append(self._read(self.output["index"]).reshape(1, -1))
            for name, index in self._tensor.items():
                value = self._read(index)
                per_image[name].append(value if value.shape[:1] == (1,) else value[None])
        return np.concatenate(rows), {n: np.concatenate(v) for n, v in per_image.items()}

    def why(self, key: str) -> str | None:
        return self._why.get(key)


def _reasons(model_t: Any, mapping: tr.TableMapping, ops: list[tr.TfliteOp]) -> dict[str, str]:
    """What the TFLite format forces on a key's tensor: a fixed Softmax scale, one scale
    shared through reshape-like ops with other keys, a bias split off, a fused activation."""
    producer = {t: op for op in ops for t in op.outputs}
    outputs = set(model_t.subgraphs[0].outputs)
    ends = {op.inputs[0] for op in ops if op.op_type == "DEQUANTIZE" and op.outputs[0] in outputs}
    out = {}
    for group in tr.key_groups(model_t, mapping):
        for key in group.keys:
            tensor = mapping.tensor_of_key[key]
            shared = [k for k in group.keys if k.rsplit(":", 1)[0] != key.rsplit(":", 1)[0]]
            op = producer.get(tensor)
            if group.fixed_by is not None:
                out[key] = (f"TFLite fixes the int8 scale of a {group.fixed_by} output (1/256 "
                            "over [0, 1]), not the table's range")  # fmt: skip
            elif any(mapping.tensor_of_key[k] != tensor for k in shared):
                kinds = {o.op_type for o in ops for t in (*o.inputs, *o.outputs)
                         if t in group.tensors} & tr.SAME_SCALE_OPS  # fmt: skip
                out[key] = (f"shared reshape scales: TFLite keeps one int8 scale through "
                            f"{'/'.join(sorted(kinds))}, so this tensor takes the union of the "
                            f"ranges of {', '.join(shared)}")
            elif op is not None and op.op_type == "ADD" and key.endswith(":out") and any(
                producer.get(t) is not None and producer[t].op_type in tr.WEIGHTED_OPS
                for t in op.inputs
            ):
                out[key] = ("the converter split the bias off into an ADD: the op's output is "
                            "rounded to int8 before its bias is added, and the bias is int8 too")
            elif tensor in ends:
                out[key] = ("full-integer TFLite stores the model's output in int8 too "
                            "(dequantized after); the simulation keeps it float")
            elif op is not None and key.endswith(":out") and op.fused_activation:
                out[key] = ("a kernel fusion: the op's fused activation clips before the int8 "
                            "store")
    return out


def held_ranges(model_t: Any, table: Any, modules: list[str]) -> dict[str, tuple[float, float]]:
    """The range each table key's tensor gets in a full-integer .tflite: its same-scale group's
    union, or the fixed range of a Softmax/Logistic/Tanh output (``tflite_ranges.key_groups``,
    what the export writes)."""
    mapping = tr.map_table(model_t, table, modules)
    return {key: group.span(mapping)
            for group in tr.key_groups(model_t, mapping) for key in group.keys}  # fmt: skip


def litert_simulation(model: Any, fp32_onnx: Any, table: Any, config: Any, rules: Any,
                      graph: Path) -> Any:  # fmt: skip
    """``QuantSim`` of a full-integer .tflite (``config`` None; else only the ops ``config``
    names run in int8) whose converted graph is ``graph`` (see the module doc)."""
    import onnx
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    from edgevt.quant.config import QuantConfig
    from edgevt.quant.onnx_qdq import QuantizedTensor, quantized_tensors
    from edgevt.quant.simulate import QuantSim, op_of, weight_ops_for

    proto = fp32_onnx if hasattr(fp32_onnx, "graph") else onnx.load(str(fp32_onnx))
    modules = [name for name, _ in model.named_modules()]
    model_t = fu.read_model(Path(graph))
    held = held_ranges(model_t, table, modules)
    if config is None:  # full integer: every op the table names, every tensor of it
        int8_ops = {op_of(k) for k in held}
        config = QuantConfig()
    else:  # the ops the config names, not the ADD of a bias the converter split off
        int8_ops = {op.name for op in tr.choose_ops(model_t, config, modules, table.ops)}
        direct = {t for op in tr.read_ops(model_t) for t in op.outputs
                  if op.op_type in tr.CONFIG_OP_TYPE}  # fmt: skip
        placed = tr.map_table(model_t, table, modules).tensor_of_key
        held = {k: v for k, v in held.items() if not k.endswith(":out") or placed[k] in direct}
    tensors = []
    for t in quantized_tensors(proto, table, config, rules):
        spans = [held[k] for k in t.keys if k in held]
        if spans:
            t = dataclasses.replace(t, min=min(s[0] for s in spans), max=max(s[1] for s in spans))
        tensors.append(t)
    covered = {k for t in tensors for k in t.keys}
    for key, (lo, hi) in held.items():  # every tensor of an int8 op is int8 in the file
        if key not in covered and op_of(key) in int8_ops:
            tensors.append(QuantizedTensor(f"tflite:{key}", (key,), lo, hi))
    weights = weight_ops_for(table, config, rules, tensors, model)
    return QuantSim(model, tensors, weights, rules.signed_activations)
