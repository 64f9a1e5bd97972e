"""TensorRT: explicit-quantization QDQ ONNX, its rule check, trtexec commands, legacy cache.

TensorRT's runtime cannot be installed on the machines edgevt is developed on, so the export
writes what a Jetson needs to build the engine itself; ``build_engine`` is the small piece
that calls TensorRT's Python API and runs only where ``tensorrt`` imports and a GPU exists
(the device bundle). It is not run in CI.
"""

from __future__ import annotations

import shlex
import struct
from pathlib import Path
from typing import Any

import numpy as np

from edgevt.io import atomic_path

# The legacy cache header names the TensorRT version that may read it: 8.5.2 is JetPack 5.1,
# 8.6.2 JetPack 6.0; TensorRT 10 still reads such caches (deprecated), 11 does not.
DEFAULT_CACHE_VERSION = "8502"
QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _const(proto: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    out = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.attribute:
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


def weight_axis(node: Any, input_index: int) -> int:
    """The output-channel axis of a weight feeding ``node`` (TensorRT quantizes weights there)."""
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul":
        return 1
    return 0  # Conv: (out, in, kh, kw)


def check_tensorrt_qdq(proto: Any) -> list[str]:
    """Violations of TensorRT's explicit-quantization rules; empty when the graph obeys them.

    Rules: int8 Q/DQ, zero points all 0 (symmetric), positive scales; activation scales
    per-tensor; weight scales per-tensor or per-output-channel on the output-channel axis;
    every DQ fed by a Q of the same scale or by an int8 constant; biases in float; and each
    quantized Conv/Gemm/MatMul has its activation input dequantized too.
    """
    const = _const(proto)
    producers = {o: n for n in proto.graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    problems: list[str] = []
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13:
        problems.append(f"opset {opset} < 13: per-channel Q/DQ needs opset 13")
    for node in proto.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = const.get(node.input[1])
        zp = const.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        where = f"{node.op_type} {node.name}"
        if scale is None:
            problems.append(f"{where}: scale is not a constant")
            continue
        if np.any(scale <= 0):
            problems.append(f"{where}: non-positive scale")
        if zp is not None:
            if zp.dtype != np.int8:
                problems.append(f"{where}: zero point is {zp.dtype}, TensorRT needs int8")
            if np.any(zp != 0):
                problems.append(f"{where}: non-zero zero point (TensorRT is symmetric)")
        if node.op_type == "DequantizeLinear":
            source = node.input[0]
            if source in const:
                data = const[source]
                if data.dtype != np.int8:
                    problems.append(
                        f"{where}: dequantizes a {data.dtype} constant (float bias "
                        "or weights expected: TensorRT keeps biases in float)"
                    )
                if scale.size > 1:
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                    for user in consumers.get(node.output[0], []):
                        if user.op_type in QUANTIZED_OPS:
                            index = list(user.input).index(node.output[0])
                            if index == 1 and axis != weight_axis(user, 1):
                                problems.append(
                                    f"{where}: per-channel axis {axis} is not the "
                                    f"output-channel axis of {user.name}"
                                )
            else:
                q = producers.get(source)
                if q is None or q.op_type != "QuantizeLinear":
                    problems.append(f"{where}: input is neither a Q output nor an int8 constant")
                elif scale.size != 1:
                    problems.append(f"{where}: activation scale must be per-tensor")
    for node in proto.graph.node:
        if node.op_type not in QUANTIZED_OPS or len(node.input) < 2:
            continue
        ins = [producers.get(i) for i in node.input[:2]]
        kinds = [p.op_type if p is not None else None for p in ins]
        if kinds.count("DequantizeLinear") == 1:
            other = node.input[kinds.index(None)] if None in kinds else None
            if other is None or other not in const:
                problems.append(
                    f"{node.op_type} {node.name}: one input quantized, the other not "
                    "(TensorRT then runs it in float with extra reformat layers)"
                )
    return problems


def write_calibration_cache(
    ranges: dict[str, tuple[float, float]], path: str | Path, version: str = DEFAULT_CACHE_VERSION
) -> Path:
    """The text calibration cache TensorRT <= 10 reads for implicit int8 (``--calib=``):
    ``tensor: <float32 scale as hex>`` with scale = amax / 127, for the fp32 ONNX model."""
    lines = [f"TRT-{version}-EntropyCalibration2"]
    for name, (lo, hi) in sorted(ranges.items()):
        scale = max(abs(lo), abs(hi), 1e-12) / 127.0
        bits = struct.unpack(">I", struct.pack(">f", scale))[0]
        lines.append(f"{name}: {bits:08x}")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return Path(path)


def trtexec_commands(
    qdq_onnx: str, fp32_onnx: str, cache: str | None, input_name: str, size: int, max_batch: int = 8
) -> str:
    """A shell script with the trtexec lines that build and time the engines on the device."""
    shapes = (
        f"--minShapes={input_name}:1x3x{size}x{size} --optShapes={input_name}:1x3x{size}x{size} "
        f"--maxShapes={input_name}:{max_batch}x3x{size}x{size}"
    )
    q = shlex.quote
    lines = [
        "#!/bin/sh",
        "# Build and time the engines on the Jetson (trtexec ships with JetPack:",
        "# /usr/src/tensorrt/bin/trtexec). Written by `edgevt export --target tensorrt`.",
        "set -e",
        'TRTEXEC="${TRTEXEC:-trtexec}"',
        "",
        "# int8, explicit quantization (TensorRT 8.6+; Q/DQ placement decides int8 layers)",
        f'"$TRTEXEC" --onnx={q(qdq_onnx)} --int8 --fp16 {shapes} '
        f"--saveEngine={q(Path(qdq_onnx).with_suffix('.engine').name)} --useCudaGraph "
        "--separateProfileRun --exportTimes=times_int8.json",
        "",
        "# fp16 reference from the fp32 model",
        f'"$TRTEXEC" --onnx={q(fp32_onnx)} --fp16 {shapes} '
        f"--saveEngine=model_fp16.engine --useCudaGraph --separateProfileRun "
        "--exportTimes=times_fp16.json",
    ]
    if cache:
        lines += [
            "",
            "# older JetPack (TensorRT <= 8.5): implicit int8 from the legacy calibration cache;",
            "# its first line names the TensorRT version (8.5.2 = JetPack 5.1): edit to match.",
            f'# "$TRTEXEC" --onnx={q(fp32_onnx)} --int8 --fp16 --calib={q(cache)} {shapes} '
            "--saveEngine=model_int8_implicit.engine",
        ]
    return "\n".join(lines) + "\n"


def tensorrt_available() -> str | None:
    """None when TensorRT and a CUDA GPU are usable here; else why not."""
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # ImportError, or the bindings' missing libraries
        return f"the tensorrt package does not import ({type(exc).__name__}: {exc})"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    input_name: str,
    size: int,
    int8: bool = True,
    fp16: bool = True,
    max_batch: int = 8,
    workspace_gib: float = 2.0,
) -> Path:
    """Build a serialized engine with TensorRT's Python API (8.6/10.x). Not run in CI: TensorRT
    cannot be installed there; the Jetson bundle runs it."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # required before 10.0
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)  # with Q/DQ in the graph: explicit quantization
    profile = builder.create_optimization_profile()
    profile.set_shape(
        input_name, (1, 3, size, size), (1, 3, size, size), (max_batch, 3, size, size)
    )
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the log above).")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    return Path(engine_path)
