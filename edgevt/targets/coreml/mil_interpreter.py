"""A NumPy reference interpreter for the ML Program inside a Core ML package (.mlpackage).

Apple's Core ML runtime runs only on macOS and iOS. To check, on any host, what a package
computes, this module executes the package's MIL program op by op: the spec is read with
coremltools, weights from the package's ``weight.bin`` with coremltools' blob reader, and each
op follows its definition in ``coremltools/converters/mil/mil/ops/defs``.

Numerics: every op computes in float32 and its outputs are rounded to the dtypes the program
declares, so an fp16 program rounds to fp16 wherever Core ML would store fp16 (a reference for
the graph, not a bit-exact model of the ANE or GPU kernels, which may accumulate in fp16).
``quantize``/``dequantize`` and the ``constexpr_*`` weight decompression ops run exactly. The
arithmetic is NumPy's except for conv, linear and matmul, which call torch's CPU kernels (see
``_t``), and erf.

Batching: a program converted for batch 1 runs N images at once. Every runtime value carries
one extra leading axis in front of the program's static shape, so an op's axis ``a >= 0``
becomes ``a + 1`` and shape arguments get that axis prepended; constants keep their shapes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgevt.errors import EdgevtError

# MIL proto DataType enum values -> numpy dtypes (sub-byte ints are widened to 8 bits).
DTYPES: dict[int, Any] = {
    1: np.bool_,
    2: np.object_,
    10: np.float16,
    11: np.float32,
    12: np.float64,
    21: np.int8,
    22: np.int16,
    23: np.int32,
    24: np.int64,
    25: np.int8,
    31: np.uint8,
    32: np.uint16,
    33: np.uint32,
    34: np.uint64,
    35: np.uint8,
    36: np.uint8,
    37: np.uint8,
    38: np.uint8,
    39: np.uint8,
}
# Blob reader method per DataType.
BLOB_READERS = {
    10: "read_fp16_data",
    11: "read_float_data",
    21: "read_int8_data",
    22: "read_int16_data",
    23: "read_int32_data",
    31: "read_uint8_data",
    32: "read_uint16_data",
    33: "read_uint32_data",
}
SUB_BYTE = {25, 35, 36, 37, 38, 39}  # int4, uint4/2/1/6/3: palettized or 4-bit weights
CAST_DTYPES = {
    "fp16": np.float16,
    "fp32": np.float32,
    "fp64": np.float64,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "int64": np.int64,
    "bool": np.bool_,
}


def unsupported(what: str) -> EdgevtError:
    return EdgevtError(
        f"the MIL reference interpreter does not implement {what}; run the package with Core ML "
        "on macOS (CoreMLRunner does), or add it to edgevt/targets/coreml/mil_interpreter.py."
    )


@dataclass
class Ref:
    """An op argument: a constant (``value``) or the name of a runtime variable."""

    name: str
    value: Any = None
    is_const: bool = False


@dataclass
class Op:
    type: str
    name: str
    args: dict[str, list[Ref]]
    outputs: list[str]
    out_dtypes: list[Any]
    out_shapes: list[tuple[int, ...] | None]
    cache: dict[str, Any] = field(default_factory=dict)

    def has(self, key: str) -> bool:
        return key in self.args

    def c(self, key: str, default: Any = None) -> Any:
        """A constant argument (axes, shapes, weights); an error if it is computed at run time."""
        if key not in self.args:
            return default
        ref = self.args[key][0]
        if not ref.is_const:
            raise unsupported(f"a non-constant {key!r} of {self.type} (op {self.name})")
        return ref.value

    def v(self, env: dict[str, np.ndarray], key: str) -> np.ndarray:
        """A data argument with its leading batch axis (constants get a batch axis of 1)."""
        return _batched(self.args[key][0], env)

    def vs(self, env: dict[str, np.ndarray], key: str) -> list[np.ndarray]:
        return [_batched(r, env) for r in self.args[key]]


def _batched(ref: Ref, env: dict[str, np.ndarray]) -> np.ndarray:
    if ref.is_const:
        return np.asarray(ref.value)[None]
    return env[ref.name]


# ---------------------------------------------------------------------------------- reading


def load_spec(path: str | Path) -> tuple[Any, Path | None]:
    """The Model spec of a package and its weights folder (None if it has no weights)."""
    import coremltools as ct

    path = Path(path)
    if not path.exists():
        raise EdgevtError(f"Core ML package {path} does not exist.")
    try:
        spec = ct.utils.load_spec(str(path))
    except Exception as exc:
        raise EdgevtError(f"cannot read {path} as a Core ML package: {exc}") from exc
    weights = None
    if path.is_dir():
        candidates = sorted(path.rglob("weights"))
        weights = next((p for p in candidates if p.is_dir()), None)
    return spec, weights


class BlobReader:
    def __init__(self, weights_dir: Path | None) -> None:
        self.weights_dir = weights_dir
        self.readers: dict[str, Any] = {}

    def read(self, file_name: str, offset: int, dtype: int, shape: tuple[int, ...]) -> np.ndarray:
        from coremltools import libmilstoragepython

        if self.weights_dir is None:
            raise EdgevtError("the package references a weight file but has no weights folder.")
        file = self.weights_dir / file_name.split("/")[-1]
        if str(file) not in self.readers:
            self.readers[str(file)] = libmilstoragepython._BlobStorageReader(str(file))
        method = BLOB_READERS.get(dtype)
        if method is None:
            raise unsupported(f"weights of data type {dtype} (sub-byte or unusual)")
        data = np.asarray(getattr(self.readers[str(file)], method)(offset))
        if dtype == 10 and data.dtype != np.float16:
            data = data.view(np.float16)
        return data.astype(DTYPES[dtype], copy=False).reshape(shape)


def _tensor_type(value_type: Any) -> tuple[int, tuple[int, ...] | None]:
    """(DataType, static shape or None when a dimension is unknown) of a ValueType."""
    if value_type.WhichOneof("type") != "tensorType":
        return 0, None
    tt = value_type.tensorType
    dims = []
    for d in tt.dimensions:
        if d.WhichOneof("dimension") != "constant":
            return tt.dataType, None
        dims.append(d.constant.size)
    return tt.dataType, tuple(dims)


def decode_value(value: Any, blobs: BlobReader) -> Any:
    dtype, shape = _tensor_type(value.type)
    kind = value.WhichOneof("value")
    if kind == "blobFileValue":
        return blobs.read(value.blobFileValue.fileName, value.blobFileValue.offset, dtype, shape)
    if kind != "immediateValue":
        raise unsupported(f"constant values of kind {kind!r}")
    imm = value.immediateValue
    if imm.WhichOneof("value") != "tensor":
        raise unsupported(f"immediate values of kind {imm.WhichOneof('value')!r}")
    tensor = imm.tensor
    which = tensor.WhichOneof("value")
    if which is None:
        flat = np.zeros(0)
    elif which == "bytes":
        if dtype in SUB_BYTE:
            raise unsupported(f"packed constants of data type {dtype}")
        flat = np.frombuffer(tensor.bytes.values, dtype=DTYPES[dtype])
    else:
        flat = np.asarray(list(getattr(tensor, which).values))
    if dtype == 2:  # strings: a scalar string or a list of them
        return flat[0] if shape == () and len(flat) else [str(s) for s in flat]
    arr = flat.astype(DTYPES.get(dtype, flat.dtype))
    return arr.reshape(shape) if shape is not None else arr


# ------------------------------------------------------------------------------ the program


class MilProgram:
    """One function of a package's ML Program, ready to run on batches."""

    def __init__(self, path: str | Path, function: str = "main") -> None:
        spec, weights = load_spec(path)
        if spec.WhichOneof("Type") != "mlProgram":
            raise EdgevtError(
                f"{path} holds a {spec.WhichOneof('Type')} model, not an ML Program; export with "
                "edgevt (ML Programs only)."
            )
        self.path = Path(path)
        self.spec = spec
        prog = spec.mlProgram
        if function not in prog.functions:
            raise EdgevtError(f"{path} has no function {function!r} ({list(prog.functions)}).")
        func = prog.functions[function]
        self.opset = func.opset
        block = func.block_specializations[func.opset]
        self.inputs: dict[str, tuple[Any, tuple[int, ...] | None]] = {}
        for inp in func.inputs:
            dtype, shape = _tensor_type(inp.type)
            self.inputs[inp.name] = (DTYPES.get(dtype, np.float32), shape)
        self.outputs: list[str] = list(block.outputs)
        blobs = BlobReader(weights)
        self.consts: dict[str, Any] = {}
        self.ops: list[Op] = []
        for proto in block.operations:
            self._add(proto, blobs)
        self._last_use = self._last_uses()

    def _add(self, proto: Any, blobs: BlobReader) -> None:
        names = [o.name for o in proto.outputs]
        if proto.type == "const":
            self.consts[names[0]] = decode_value(proto.attributes["val"], blobs)
            return
        if len(proto.blocks):
            raise unsupported(f"control flow (op {proto.type} {names[0]})")
        args: dict[str, list[Ref]] = {}
        for key, arg in proto.inputs.items():
            refs = []
            for binding in arg.arguments:
                if binding.WhichOneof("binding") == "value":
                    refs.append(Ref("", decode_value(binding.value, blobs), True))
                elif binding.name in self.consts:
                    refs.append(Ref(binding.name, self.consts[binding.name], True))
                else:
                    refs.append(Ref(binding.name))
            args[key] = refs
        # iOS16 constexpr ops carry their parameters as attributes rather than inputs.
        for key, value in proto.attributes.items():
            if key != "name" and key not in args:
                args[key] = [Ref("", decode_value(value, blobs), True)]
        types = [_tensor_type(o.type) for o in proto.outputs]
        op = Op(
            proto.type,
            names[0],
            args,
            names,
            [DTYPES.get(t, None) for t, _ in types],
            [s for _, s in types],
        )
        if proto.type.startswith("constexpr_"):
            # Weight decompression: folded here, once (Core ML does it at load or run time).
            fn = CONSTEXPR_OPS.get(proto.type)
            if fn is None:
                raise unsupported(f"op {proto.type!r} (op {names[0]})")
            for name, value, dt in zip(names, fn(op), op.out_dtypes, strict=True):
                self.consts[name] = value.astype(dt) if dt is not None else value
            return
        if proto.type not in OPS:
            raise unsupported(f"op {proto.type!r} (op {names[0]})")
        self.ops.append(op)

    def _last_uses(self) -> dict[str, int]:
        last: dict[str, int] = {}
        for i, op in enumerate(self.ops):
            for refs in op.args.values():
                for r in refs:
                    if not r.is_const:
                        last[r.name] = i
        return last

    def op_types(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.ops:
            counts[op.type] = counts.get(op.type, 0) + 1
        return counts

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The program's outputs for N items at once. Each feed has the input's static shape,
        except that a leading dimension of 1 in the program may be any N (the outputs then
        have N in that place too)."""
        env, folded = self._feed(feeds)
        self._execute(env, set())
        out = {}
        for name in self.outputs:
            value = env[name] if name in env else np.asarray(self.consts[name])[None]
            out[name] = value.reshape(value.shape[0], *value.shape[2:]) if folded else value[0]
        return out

    def trace(
        self, feeds: dict[str, np.ndarray], names: set[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Intermediate values (``names``, or all when None), each with a leading batch axis in
        front of its static shape; fp16 values are held as float32 (see ``_store``)."""
        env, _ = self._feed(feeds)
        self._execute(env, names)
        return env if names is None else {k: v for k, v in env.items() if k in names}

    def _feed(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
        env: dict[str, np.ndarray] = {}
        folded = []
        for name, (dtype, shape) in self.inputs.items():
            if name not in feeds:
                raise EdgevtError(f"missing input {name!r}; the program takes {list(self.inputs)}.")
            x = np.asarray(feeds[name])
            if shape is not None and shape[:1] == (1,) and x.shape[1:] == shape[1:]:
                batched = x[:, None]
                folded.append(True)
            elif shape is None or tuple(x.shape) == shape:
                batched = x[None]
                folded.append(False)
            else:
                raise EdgevtError(f"input {name!r} has shape {x.shape}; the program takes {shape}.")
            env[name] = _store(batched, dtype, False)
        if len({v.shape[0] for v in env.values()}) > 1:
            raise EdgevtError("all inputs must hold the same number of items.")
        return env, bool(folded) and all(folded)

    def _execute(self, env: dict[str, np.ndarray], keep: set[str] | None) -> None:
        """Run every op on ``env``; values no later op reads are dropped unless in ``keep``
        (None keeps everything)."""
        for i, op in enumerate(self.ops):
            try:
                results = OPS[op.type](op, env)
            except EdgevtError:
                raise
            except Exception as exc:
                raise EdgevtError(
                    f"the MIL interpreter failed in op {op.type} ({op.name}): {exc!r}"
                ) from exc
            for name, value, dtype, shape in zip(
                op.outputs, results, op.out_dtypes, op.out_shapes, strict=True
            ):
                value = _store(np.asarray(value), dtype, op.type in MOVES)
                if shape is not None and value.shape[1:] != shape:
                    raise EdgevtError(
                        f"the MIL interpreter computed shape {value.shape[1:]} for {name} "
                        f"({op.type}); the program declares {shape}: an interpreter bug."
                    )
                env[name] = value
            if keep is None:
                continue
            for refs in op.args.values():
                for r in refs:
                    if not r.is_const and self._last_use.get(r.name) == i:
                        if r.name not in self.outputs and r.name not in keep:
                            env.pop(r.name, None)


# ------------------------------------------------------------------------------------ ops


def f32(x: np.ndarray) -> np.ndarray:
    """Compute dtype: float32 for float inputs (outputs are rounded back by ``_store``)."""
    return x.astype(np.float32) if x.dtype == np.float16 else x


# Ops that only move data: their outputs hold the same (already rounded) values as the inputs.
MOVES = {
    "reshape", "transpose", "squeeze", "expand_dims", "concat", "stack", "split",
    "slice_by_index", "slice_by_size", "gather", "tile", "identity",
}  # fmt: skip


def _store(value: np.ndarray, dtype: Any, moved: bool) -> np.ndarray:
    """The value as the program types it. fp16 is held as float32 numbers rounded to fp16
    (every op computes in float32, and casting each value back and forth would cost more
    than the arithmetic); other dtypes are held as themselves."""
    if dtype is None:
        return value
    if dtype == np.float16:
        if value.dtype == np.float16:
            return value.astype(np.float32)
        if moved and value.dtype == np.float32:
            return value
        return _round_fp16(value)
    return value if value.dtype == dtype else value.astype(dtype)


def _round_fp16(x: np.ndarray) -> np.ndarray:
    import torch  # its fp16 casts are about twice as fast as NumPy's

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return t.half().float().numpy()


def _ax(axis: int, rank: int) -> int:
    """A static axis of a rank-``rank`` value -> its axis in the batched array."""
    axis = int(axis)
    if not -rank <= axis < rank:
        raise EdgevtError(f"axis {axis} out of range for rank {rank}.")
    return axis % rank + 1


def _align(values: list[np.ndarray]) -> list[np.ndarray]:
    """Insert unit axes after the batch axis so all values have the same rank (MIL broadcasts
    static shapes aligned to the right; the batch axis must stay first)."""
    rank = max(v.ndim for v in values)
    return [v.reshape(v.shape[0], *([1] * (rank - v.ndim)), *v.shape[1:]) for v in values]


def _binary(fn: Callable) -> Callable:
    def run(op: Op, env):
        x, y = _align([op.v(env, "x"), op.v(env, "y")])
        return [fn(f32(x), f32(y))]

    return run


def _unary(fn: Callable) -> Callable:
    def run(op: Op, env):
        return [fn(f32(op.v(env, "x")), op)]

    return run


def _erf(x: np.ndarray) -> np.ndarray:
    # NumPy has no erf; torch (a core dependency) computes it to float32 precision.
    import torch

    return torch.special.erf(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def _gelu(x: np.ndarray, op: Op) -> np.ndarray:
    mode = op.c("mode", "EXACT")
    if mode == "EXACT":
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x / (1.0 + np.exp(-1.702 * x))
    raise unsupported(f"gelu mode {mode!r}")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # overflow-free


def _softmax(op: Op, env):
    x = f32(op.v(env, "x"))
    axis = _ax(op.c("axis", -1), x.ndim - 1)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return [e / e.sum(axis=axis, keepdims=True)]


def _layer_norm(op: Op, env):
    x = f32(op.v(env, "x"))
    rank = x.ndim - 1
    axes = op.c("axes")
    axes = tuple(range(1, x.ndim)) if axes is None else tuple(_ax(a, rank) for a in axes)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + np.float32(op.c("epsilon", 1e-5)))
    # gamma/beta have the shape of the normalised (trailing) axes.
    if op.has("gamma"):
        y = y * f32(np.asarray(op.c("gamma")))
    if op.has("beta"):
        y = y + f32(np.asarray(op.c("beta")))
    return [y]


def _batch_norm(op: Op, env):
    x = f32(op.v(env, "x"))
    shape = (1, 1, -1) + (1,) * (x.ndim - 3)
    mean, var = (f32(np.asarray(op.c(k))).reshape(shape) for k in ("mean", "variance"))
    y = (x - mean) / np.sqrt(var + np.float32(op.c("epsilon", 1e-5)))
    if op.has("gamma"):
        y = y * f32(np.asarray(op.c("gamma"))).reshape(shape)
    if op.has("beta"):
        y = y + f32(np.asarray(op.c("beta"))).reshape(shape)
    return [y]


def _reduce(fn: Callable) -> Callable:
    def run(op: Op, env):
        x = f32(op.v(env, "x"))
        rank = x.ndim - 1
        axes = op.c("axes")
        axes = tuple(range(1, x.ndim)) if axes is None else tuple(_ax(a, rank) for a in axes)
        return [fn(x, axis=axes, keepdims=bool(op.c("keep_dims", False)))]

    return run


# conv, linear and matmul run on torch's CPU kernels: NumPy's stacked matmul hands every small
# product to a multi-threaded OpenBLAS call, which on a busy 2-core host was 50-300x slower
# (LeViT attention: 0.5 s instead of 2 ms per batch), and torch honours ``threads``
# (torch.set_num_threads). The arithmetic is the same float32 GEMM/convolution.


def _t(x: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(f32(x)))


def _weight(op: Op, key: str):
    """A constant weight as a float32 torch tensor, converted once per op."""
    if key not in op.cache:
        op.cache[key] = _t(np.asarray(op.c(key))) if op.has(key) else None
    return op.cache[key]


def _matmul(op: Op, env):
    import torch

    x, y = f32(op.v(env, "x")), f32(op.v(env, "y"))
    if op.c("transpose_x", False):
        x = np.swapaxes(x, -1, -2)
    if op.c("transpose_y", False):
        y = np.swapaxes(y, -1, -2)
    # Rank-1 operands follow numpy: promoted then squeezed.
    x1, y1 = x.ndim == 2, y.ndim == 2
    if x1:
        x = x[:, None, :]
    if y1:
        y = y[:, :, None]
    x, y = _align([x, y])
    out = torch.matmul(_t(x), _t(y)).numpy()
    if x1:
        out = out[..., 0, :]
    if y1:
        out = out[..., 0]
    return [out]


def _linear(op: Op, env):
    import torch.nn.functional as F

    x = op.v(env, "x")
    w = _weight(op, "weight")
    out = F.linear(_t(x.reshape(-1, x.shape[-1])), w, _weight(op, "bias")).numpy()
    return [out.reshape(*x.shape[:-1], w.shape[0])]


def _conv_pads(op: Op, spatial: tuple[int, ...], kernel: tuple[int, ...], strides, dilations):
    pad_type = op.c("pad_type", "valid")
    n = len(spatial)
    if pad_type == "valid":
        return [(0, 0)] * n
    if pad_type == "custom":
        pad = [int(p) for p in op.c("pad", [0] * 2 * n)]
        return [(pad[2 * i], pad[2 * i + 1]) for i in range(n)]
    if pad_type in ("same", "same_lower"):
        pads = []
        for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            pads.append((small, big) if pad_type == "same" else (big, small))
        return pads
    raise unsupported(f"pad_type {pad_type!r}")


def _conv(op: Op, env):
    import torch.nn.functional as F

    x = op.v(env, "x")
    w = _weight(op, "weight")
    if w.ndim not in (3, 4):
        raise unsupported(f"{w.ndim - 2}-D conv (op {op.name})")
    n, b = x.shape[:2]
    x = x.reshape(n * b, *x.shape[2:])
    spatial = len(x.shape) - 2
    strides = [int(s) for s in op.c("strides", [1] * spatial)]
    dilations = [int(d) for d in op.c("dilations", [1] * spatial)]
    pads = _conv_pads(op, x.shape[2:], tuple(w.shape[2:]), strides, dilations)
    if any(p for pair in pads for p in pair):
        x = np.pad(x, [(0, 0), (0, 0), *pads])
    conv = F.conv2d if spatial == 2 else F.conv1d
    groups = int(op.c("groups", 1))
    out = conv(_t(x), w, _weight(op, "bias"), strides, 0, dilations, groups).numpy()
    return [out.reshape(n, b, *out.shape[1:])]


def _pool(kind: str) -> Callable:
    def run(op: Op, env):
        x = f32(op.v(env, "x"))
        kernel = [int(k) for k in op.c("kernel_sizes")]
        if len(kernel) != 2 or op.c("ceil_mode", False):
            raise unsupported(f"{kind} with kernel {kernel} / ceil_mode (op {op.name})")
        n, b = x.shape[:2]
        x = x.reshape(n * b, *x.shape[2:])
        strides = [int(s) for s in op.c("strides", [1, 1])]
        pads = _conv_pads(op, x.shape[2:], kernel, strides, [1, 1])
        fill = -np.inf if kind == "max_pool" else 0.0
        xp = np.pad(x, [(0, 0), (0, 0), *pads], constant_values=fill)
        win = np.lib.stride_tricks.sliding_window_view(xp, kernel, (2, 3))[
            :, :, :: strides[0], :: strides[1]
        ]
        if kind == "max_pool":
            out = win.max(axis=(-1, -2))
        elif op.c("exclude_padding_from_average", False):
            ones = np.pad(np.ones((1, 1, *x.shape[2:]), np.float32), [(0, 0), (0, 0), *pads])
            counts = np.lib.stride_tricks.sliding_window_view(ones, kernel, (2, 3))[
                :, :, :: strides[0], :: strides[1]
            ].sum(axis=(-1, -2))
            out = win.sum(axis=(-1, -2)) / counts
        else:
            out = win.mean(axis=(-1, -2))
        return [out.reshape(n, b, *out.shape[1:])]

    return run


def _reshape(op: Op, env):
    x = op.v(env, "x")
    shape = [int(s) for s in np.asarray(op.c("shape")).reshape(-1)]
    shape = [x.shape[i + 1] if s == 0 else s for i, s in enumerate(shape)]
    return [x.reshape(x.shape[0], *shape)]


def _transpose(op: Op, env):
    x = op.v(env, "x")
    rank = x.ndim - 1
    perm = [_ax(p, rank) for p in op.c("perm")]
    return [np.transpose(x, [0, *perm])]


def _squeeze(op: Op, env):
    x = op.v(env, "x")
    axes = op.c("axes")
    if axes is None:
        axes = [i for i, s in enumerate(x.shape[1:]) if s == 1]
    return [np.squeeze(x, axis=tuple(_ax(a, x.ndim - 1) for a in axes))]


def _expand_dims(op: Op, env):
    x = op.v(env, "x")
    out_rank = x.ndim - 1 + len(op.c("axes"))
    axes = sorted(_ax(a, out_rank) for a in op.c("axes"))
    for a in axes:
        x = np.expand_dims(x, a)
    return [x]


def _concat(op: Op, env):
    values = _align(op.vs(env, "values"))
    values = [np.broadcast_to(v, (max(u.shape[0] for u in values), *v.shape[1:])) for v in values]
    axis = _ax(op.c("axis"), values[0].ndim - 1)
    if op.c("interleave", False):
        raise unsupported("concat with interleave")
    return [np.concatenate(values, axis=axis)]


def _stack(op: Op, env):
    values = op.vs(env, "values")
    n = max(v.shape[0] for v in values)
    values = [np.broadcast_to(v, (n, *v.shape[1:])) for v in values]
    return [np.stack(values, axis=_ax(op.c("axis"), values[0].ndim))]


def _split(op: Op, env):
    x = op.v(env, "x")
    axis = _ax(op.c("axis"), x.ndim - 1)
    sizes = op.c("split_sizes")
    if sizes is None:
        parts = int(op.c("num_splits"))
        sizes = [x.shape[axis] // parts] * parts
    bounds = np.cumsum([int(s) for s in sizes])[:-1]
    return np.split(x, bounds, axis=axis)


def _slice_by_index(op: Op, env):
    x = op.v(env, "x")
    rank = x.ndim - 1
    begin = [int(b) for b in op.c("begin")]
    end = [int(e) for e in op.c("end")]
    stride = [int(s) for s in op.c("stride", [1] * rank)]
    begin_mask = list(op.c("begin_mask", [False] * rank))
    end_mask = list(op.c("end_mask", [False] * rank))
    squeeze_mask = list(op.c("squeeze_mask", [False] * rank))
    slices = [slice(None)]
    for i in range(rank):
        if squeeze_mask[i]:
            slices.append(slice(begin[i], None if begin[i] == -1 else begin[i] + 1, 1))
            continue
        b = None if begin_mask[i] else begin[i]
        e = None if end_mask[i] else end[i]
        slices.append(slice(b, e, stride[i]))
    out = x[tuple(slices)]
    squeeze = tuple(i + 1 for i in range(rank) if squeeze_mask[i])
    return [np.squeeze(out, axis=squeeze) if squeeze else out]


def _slice_by_size(op: Op, env):
    x = op.v(env, "x")
    begin = [int(b) for b in op.c("begin")]
    size = [int(s) for s in op.c("size")]
    slices = [slice(None)]
    for i, (b, s) in enumerate(zip(begin, size, strict=True)):
        slices.append(slice(b, x.shape[i + 1] if s == -1 else b + s))
    return [x[tuple(slices)]]


def _gather(op: Op, env):
    x = op.v(env, "x")
    rank = x.ndim - 1
    if int(op.c("batch_dims", 0)):
        raise unsupported("gather with batch_dims")
    indices = np.asarray(op.c("indices")).astype(np.int64)
    axis = _ax(op.c("axis", 0), rank)
    indices = np.where(indices < 0, indices + x.shape[axis], indices)
    return [np.take(x, indices, axis=axis)]


def _pad(op: Op, env):
    x = op.v(env, "x")
    pad = [int(p) for p in np.asarray(op.c("pad")).reshape(-1)]
    k = len(pad) // 2
    widths = [(0, 0)] * (x.ndim - k) + [(pad[2 * i], pad[2 * i + 1]) for i in range(k)]
    mode = op.c("mode", "constant")
    if mode == "constant":  # a filled array and one copy: several times faster than np.pad
        shape = [n + a + b for n, (a, b) in zip(x.shape, widths, strict=True)]
        out = np.full(shape, float(op.c("constant_val", 0.0)), x.dtype)
        out[tuple(slice(a, a + n) for n, (a, _) in zip(x.shape, widths, strict=True))] = x
        return [out]
    return [np.pad(x, widths, mode={"reflect": "reflect", "replicate": "edge"}[mode])]


def _tile(op: Op, env):
    x = op.v(env, "x")
    return [np.tile(x, [1, *[int(r) for r in op.c("reps")]])]


def _cast(op: Op, env):
    dtype = op.c("dtype")
    if dtype not in CAST_DTYPES:
        raise unsupported(f"cast to {dtype!r}")
    x = op.v(env, "x")
    if np.issubdtype(CAST_DTYPES[dtype], np.integer) and np.issubdtype(x.dtype, np.floating):
        x = np.trunc(x)
    return [x.astype(CAST_DTYPES[dtype])]


def _select(op: Op, env):
    cond, a, b = _align([op.v(env, "cond"), op.v(env, "a"), op.v(env, "b")])
    return [np.where(cond.astype(bool), a, b)]


def _qparams(op: Op, rank: int) -> tuple[np.ndarray, np.ndarray | None]:
    """scale and zero point shaped to broadcast against a batched rank-``rank`` value."""
    scale = np.asarray(op.c("scale"), np.float32)
    zero = op.c("zero_point")
    zero = None if zero is None else np.asarray(zero).astype(np.float32)
    axis = op.c("axis")
    if scale.ndim == 1 and scale.size > 1:
        if axis is None:
            raise EdgevtError(f"{op.name}: a per-channel scale needs an axis.")
        shape = [1] * (rank + 1)
        shape[_ax(axis, rank)] = -1
        scale = scale.reshape(shape)
        zero = None if zero is None else zero.reshape(shape)
    return scale, zero


def _quantize(op: Op, env):
    x = f32(op.v(env, "input"))
    scale, zero = _qparams(op, x.ndim - 1)
    dtype = CAST_DTYPES[op.c("output_dtype")]
    info = np.iinfo(dtype)
    q = np.round(x / scale)
    if zero is not None:
        q = q + zero
    return [np.clip(q, info.min, info.max).astype(dtype)]


def _dequantize(op: Op, env):
    q = op.v(env, "input").astype(np.float32)
    scale, zero = _qparams(op, q.ndim - 1)
    if zero is not None:
        q = q - zero
    return [q * scale]


def _affine_dequantize(op: Op) -> list[np.ndarray]:
    q = np.asarray(op.c("quantized_data")).astype(np.float32)
    scale = np.asarray(op.c("scale")).astype(np.float32)
    zero = np.asarray(op.c("zero_point")).astype(np.float32)
    axis = int(op.c("axis")) % q.ndim
    shape = [1] * q.ndim
    shape[axis] = -1
    if scale.ndim:
        scale = scale.reshape(shape)
    if zero.ndim:
        zero = zero.reshape(shape)
    return [(q - zero) * scale]


def _blockwise_shift_scale(op: Op) -> list[np.ndarray]:
    data = np.asarray(op.c("data")).astype(np.float32)
    scale = np.asarray(op.c("scale")).astype(np.float32)
    offset = op.c("offset")
    offset = None if offset is None else np.asarray(offset).astype(np.float32)
    for axis, (d, s) in enumerate(zip(data.shape, scale.shape, strict=True)):
        if d != s:
            scale = np.repeat(scale, d // s, axis)
            if offset is not None:
                offset = np.repeat(offset, d // s, axis)
    if offset is not None:
        data = data - offset
    return [data * scale]


CONSTEXPR_OPS: dict[str, Callable[[Op], list[np.ndarray]]] = {
    "constexpr_affine_dequantize": _affine_dequantize,
    "constexpr_blockwise_shift_scale": _blockwise_shift_scale,
    "constexpr_cast": lambda op: [
        np.asarray(op.c("source_val")).astype(CAST_DTYPES[op.c("output_dtype")])
    ],
}


def _f(op: Op, key: str, default: float | None = None) -> np.float32:
    """A scalar parameter as float32 (keeps float32 arithmetic in float32)."""
    return np.float32(op.c(key, default))


def _identity(op: Op, env):
    return [op.v(env, "x")]


OPS: dict[str, Callable[[Op, dict[str, np.ndarray]], list[np.ndarray]]] = {
    # elementwise binary
    "add": _binary(np.add),
    "sub": _binary(np.subtract),
    "mul": _binary(np.multiply),
    "real_div": _binary(np.divide),
    "floor_div": _binary(np.floor_divide),
    "pow": _binary(np.power),
    "maximum": _binary(np.maximum),
    "minimum": _binary(np.minimum),
    "equal": _binary(np.equal),
    "not_equal": _binary(np.not_equal),
    "less": _binary(np.less),
    "less_equal": _binary(np.less_equal),
    "greater": _binary(np.greater),
    "greater_equal": _binary(np.greater_equal),
    # elementwise unary and activations
    "relu": _unary(lambda x, op: np.maximum(x, 0)),
    "relu6": _unary(lambda x, op: np.clip(x, 0, 6)),
    "clip": _unary(lambda x, op: np.clip(x, _f(op, "alpha"), _f(op, "beta"))),
    "thresholded_relu": _unary(lambda x, op: np.where(x > op.c("alpha", 1.0), x, 0)),
    "leaky_relu": _unary(lambda x, op: np.where(x >= 0, x, op.c("alpha", 0.01) * x)),
    "sigmoid": _unary(lambda x, op: _sigmoid(x)),
    "sigmoid_hard": _unary(
        lambda x, op: np.clip(_f(op, "alpha", 0.2) * x + _f(op, "beta", 0.5), 0, 1)
    ),
    "silu": _unary(lambda x, op: x * _sigmoid(x)),
    "gelu": _unary(_gelu),
    "tanh": _unary(lambda x, op: np.tanh(x)),
    "exp": _unary(lambda x, op: np.exp(x)),
    "log": _unary(lambda x, op: np.log(x + op.c("epsilon", 0.0))),
    "sqrt": _unary(lambda x, op: np.sqrt(x)),
    "rsqrt": _unary(lambda x, op: 1.0 / np.sqrt(x + op.c("epsilon", 1e-12))),
    "inverse": _unary(lambda x, op: 1.0 / (x + op.c("epsilon", 1e-4))),
    "abs": _unary(lambda x, op: np.abs(x)),
    "square": _unary(lambda x, op: x * x),
    "erf": _unary(lambda x, op: _erf(x)),
    "floor": _unary(lambda x, op: np.floor(x)),
    "ceil": _unary(lambda x, op: np.ceil(x)),
    "round": _unary(lambda x, op: np.round(x)),
    "sign": _unary(lambda x, op: np.sign(x)),
    "linear_activation": _unary(lambda x, op: op.c("alpha") * x + op.c("beta", 0.0)),
    "identity": _identity,
    "softmax": _softmax,
    "layer_norm": _layer_norm,
    "batch_norm": _batch_norm,
    "reduce_mean": _reduce(np.mean),
    "reduce_sum": _reduce(np.sum),
    "reduce_max": _reduce(np.max),
    "reduce_min": _reduce(np.min),
    # compute
    "matmul": _matmul,
    "linear": _linear,
    "conv": _conv,
    "avg_pool": _pool("avg_pool"),
    "max_pool": _pool("max_pool"),
    # layout
    "reshape": _reshape,
    "transpose": _transpose,
    "squeeze": _squeeze,
    "expand_dims": _expand_dims,
    "concat": _concat,
    "stack": _stack,
    "split": _split,
    "slice_by_index": _slice_by_index,
    "slice_by_size": _slice_by_size,
    "gather": _gather,
    "pad": _pad,
    "tile": _tile,
    "cast": _cast,
    "select": _select,
    # activation quantization (iOS17)
    "quantize": _quantize,
    "dequantize": _dequantize,
}
