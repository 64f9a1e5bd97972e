"""Keep every int32 bias of a full-int8 .tflite representable.

TFLite stores a conv / fully-connected bias as int32 on the scale ``input scale x weight
scale`` of each output channel. A channel whose weights are all but zero (a pruned or dead
channel: Lite0 has weights of 3e-7 beside a bias of -2.6) gets a tiny weight scale, the bias
no longer fits in int32, and ai-edge-quantizer clips it silently: the channel then outputs the
wrong constant (1.95 instead of 0 after ReLU6). ONNX Runtime's quantizer widens that channel's
weight scale until the bias fits; this does the same (with room left in the int32 accumulator
for the sum of products the bias is added to) to the quantized .tflite, from the fp32
file's float biases.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgevt.quant import tflite_ranges as tr

INT32_MAX = 2**31 - 1
# The bias is added to the int32 sum of products: keep it within half the int32 range, so
# that sum (at most 127 x 255 x 2**15 for any conv here) cannot overflow the accumulator.
BIAS_LIMIT = 2**30
_INT8, _INT32 = 9, 2  # TFLite TensorType codes


def fit_int32_biases(quantized_t: Any, fp32_t: Any) -> list[str]:
    """Widen the weight scale of every channel whose int32 bias would overflow, requantizing
    its weights and the bias, in ``quantized_t`` (a flatbuffer object, changed in place).
    Returns one line per op changed, naming how many channels."""
    float_bias = {}
    for op in tr.read_ops(fp32_t):
        if op.op_type in tr.WEIGHTED_OPS and len(op.inputs) > 2 and op.inputs[2] >= 0:
            tensor = fp32_t.subgraphs[0].tensors[op.inputs[2]]
            data = fp32_t.buffers[tensor.buffer].data
            if data is not None and len(data):
                float_bias[tensor.name] = np.frombuffer(bytes(data), dtype=np.float32)
    tensors, buffers = quantized_t.subgraphs[0].tensors, quantized_t.buffers
    changed = []
    for op in tr.read_ops(quantized_t):
        if op.op_type not in tr.WEIGHTED_OPS or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        x, w, b = (tensors[i] for i in op.inputs[:3])
        bias = float_bias.get(b.name)
        if b.type != _INT32 or w.type != _INT8 or bias is None or not _scales(x):
            continue
        input_scale = _scales(x)[0]
        w_scale = np.asarray(w.quantization.scale, dtype=np.float64)
        need = np.abs(bias.astype(np.float64)) / (input_scale * BIAS_LIMIT)
        if w_scale.size not in (1, bias.size) or not (w_scale < need).any():
            continue
        if w_scale.size == 1:  # per-tensor weights: one scale for all
            new_scale = np.array([max(w_scale[0], float(need.max()) * (1 + 1e-6))])
        else:
            new_scale = np.where(w_scale < need, need * (1 + 1e-6), w_scale)
        axis = w.quantization.quantizedDimension if w_scale.size > 1 else 0
        shape = [1] * len(w.shape)
        shape[axis] = -1
        weights = np.frombuffer(bytes(buffers[w.buffer].data), np.int8).reshape(w.shape)
        real = weights * w_scale.reshape(shape if w_scale.size > 1 else [1] * len(w.shape))
        scale_b = new_scale.reshape(shape if new_scale.size > 1 else [1] * len(w.shape))
        requantized = np.clip(np.round(real / scale_b), -127, 127).astype(np.int8)
        buffers[w.buffer].data = np.frombuffer(requantized.tobytes(), np.uint8)
        w.quantization.scale = new_scale.astype(np.float32).tolist()
        b_scale = input_scale * new_scale  # one per channel, or one for per-tensor weights
        q_bias = np.clip(np.round(bias / b_scale), -INT32_MAX - 1, INT32_MAX).astype(np.int32)
        buffers[b.buffer].data = np.frombuffer(q_bias.tobytes(), np.uint8)
        b.quantization.scale = b_scale.astype(np.float32).tolist()
        b.quantization.zeroPoint = [0] * b_scale.size
        which = (f"{int((w_scale < need).sum())} channel(s) with near-zero weights got a wider "
                 "weight scale" if w_scale.size > 1 else "its per-tensor weight scale widened")
        changed.append(f"{_module(b.name)}: {which} so the int32 bias fits")
    return changed


def _module(name: str | bytes) -> str:
    """``Root/a.Sequential_blocks/b.Block_0/c.Conv2d_conv_pw;`` -> ``blocks.0.conv_pw``."""
    text = name.decode() if isinstance(name, bytes) else name
    parts = [c.rsplit(".", 1)[-1].split("_", 1)[-1] for c in text.split(";")[0].split("/")[1:]]
    return ".".join(parts) or text


def _scales(tensor: Any) -> list[float]:
    q = tensor.quantization
    return [] if q is None or q.scale is None else list(q.scale)
