"""Core ML export (ML Program .mlpackage: fp32, fp16, w8, w8a8) and the Core ML runner.

Conversion is ``torch.export`` then ``ct.convert(..., convert_to="mlprogram")`` with float32
``images`` in and float32 ``logits`` out, batch 1. Precisions:

* ``fp32``, ``fp16``: compute precision of the whole program (iOS15+).
* ``w8``: fp16 compute, int8 per-output-channel symmetric weights for every conv/linear/matmul
  weight (``ct.optimize.coreml.linear_quantize_weights``; iOS16+).
* ``w8a8``: w8 plus int8 activations on the inputs of every conv, linear and matmul (iOS17+).
  The ranges come from the edgevt CalibrationTable, not from a Core ML calibration run
  (``linear_quantize_activations`` calibrates with ``predict``, which needs macOS, and it does
  not quantize matmuls). Core ML's rule, as ``linear_quantize_activations`` applies it: int8
  symmetric, zero point 0, scale = max(|min|, |max|) / 127 in the activation's dtype. Only
  op inputs are quantized (``<op>:in*`` keys); ``:out`` ranges are not used.

Table keys name PyTorch modules; MIL ops do not. A conv/linear op is matched to its module by
the name of its weight constant (the exported program names parameters by module path). A
matmul has no such name: the i-th activation x activation matmul of the program is paired with
the i-th product the calibration tracer sees (both graphs keep execution order), and values
decide and confirm which operand is ``in0`` and which ``in1``: the fp16 program runs once on
``example`` in the reference interpreter, the PyTorch model once under the tracer, and sorted
values (blind to layout transposes) must agree.

The package carries ``ArtifactInfo`` in ``user_defined_metadata["edgevt"]``; ``CoreMLRunner``
runs it with Apple's runtime on macOS, else with the MIL reference interpreter.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgevt.artifact import METADATA_KEY, ArtifactInfo
from edgevt.errors import EdgevtError
from edgevt.io import atomic_dir
from edgevt.quant.config import OpQuant, QuantConfig
from edgevt.quant.table import CalibrationTable
from edgevt.targets.coreml.census import COMPUTE_OPS, census, float_ops_not_asked
from edgevt.targets.coreml.runner import coremltools as _coremltools
from edgevt.targets.coreml.runner import quiet as _quiet

INPUT_NAME, OUTPUT_NAME = "images", "logits"
PRECISIONS = ("fp32", "fp16", "w8", "w8a8")
# The oldest deployment target that can hold each precision (ML Programs start at iOS15;
# constexpr weight dequantization at iOS16; quantize/dequantize activations at iOS17).
MIN_TARGET = {"fp32": "iOS15", "fp16": "iOS15", "w8": "iOS16", "w8a8": "iOS17"}
# How close (relative L2 of sorted values) a MIL operand must be to a PyTorch tensor to take
# its table key; an fp16 program differs from the fp32 PyTorch model by ~1e-3.
MATCH_TOLERANCE = 0.05


@dataclass
class CoreMLExport:
    """What ``export_coreml`` wrote and what it could not honour.

    ``census`` is ``census(path)``; ``unexpected_float`` lists compute ops left in float that
    the precision (and config) asked to quantize; ``kept_float`` the modules the config keeps
    in float; ``activation_keys`` maps each quantized MIL operand (``op.input``) to its table
    key; ``notes`` says what else was not honoured.
    """

    path: Path
    precision: str
    deployment_target: str
    compute_precision: str
    info: ArtifactInfo
    census: dict[str, Any]
    unexpected_float: list[str] = field(default_factory=list)
    kept_float: list[str] = field(default_factory=list)
    activation_keys: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "precision": self.precision,
            "deployment_target": self.deployment_target,
            "compute_precision": self.compute_precision,
            "census": self.census,
            "unexpected_float": self.unexpected_float,
            "kept_float": self.kept_float,
            "activation_keys": self.activation_keys,
            "notes": self.notes,
        }


# ------------------------------------------------------------------------------ export


def deployment_target(name: str | None, precision: str) -> str:
    """The deployment target to convert for: ``name`` checked against ``precision``, or the
    oldest one that can hold ``precision`` when None."""
    ct = _coremltools()
    if precision not in PRECISIONS:
        raise EdgevtError(
            f"unknown Core ML precision {precision!r}; choose from {', '.join(PRECISIONS)}."
        )
    oldest = MIN_TARGET[precision]
    if name is None:
        return oldest
    known = ct.target.__members__
    if name not in known:
        usable = [n for n in known if n.startswith(("iOS", "macOS"))]
        raise EdgevtError(
            f"unknown Core ML deployment target {name!r}; use one of {', '.join(usable)}."
        )
    if known[name] < known[oldest]:
        raise EdgevtError(
            f"Core ML {precision} needs deployment target {oldest} (or the macOS/watchOS/tvOS "
            f"release of the same year) or newer; {name} is too old: choose {oldest} or newer, "
            "or leave the target unset to get the oldest that works."
        )
    return name


def export_coreml(
    model: nn.Module,
    info: ArtifactInfo,
    out: str | Path,
    *,
    precision: str,
    table: CalibrationTable | None = None,
    example: torch.Tensor | None = None,
    minimum_deployment_target: str | None = None,
    config: QuantConfig | None = None,
) -> CoreMLExport:
    """Convert ``model`` (fused, eval; NCHW float32 in, logits out) to an ML Program package.

    Args:
        out: the ``.mlpackage`` folder to write (replaced atomically).
        precision: fp32, fp16, w8 (int8 weights) or w8a8 (int8 weights and activations).
        table: activation ranges for w8a8 (required there, unused otherwise).
        example: one input (1, 3, H, W) to trace with and to match tensors on; None means a
            seeded random input of the model's input size.
        minimum_deployment_target: e.g. "iOS17"; None means the oldest that holds
            ``precision`` (fp32/fp16: iOS15, w8: iOS16, w8a8: iOS17).
        config: which conv/linear/matmul ops to quantize (w8/w8a8); None quantizes all of
            them. Ops it keeps in float (``None``) stay fp16.
    """
    ct = _coremltools()
    out = Path(out)
    target = deployment_target(minimum_deployment_target, precision)
    example = _check_request(out, info, precision, table, example)
    model = model.eval()
    compute = "fp32" if precision == "fp32" else "fp16"
    mlmodel = _convert(ct, model, example, compute, target)
    done = _Quantized()
    if precision in ("w8", "w8a8"):
        mlmodel, done = _quantize(ct, mlmodel, model, example, precision, table, config)
    stored = dataclasses.replace(
        info,
        target="coreml",
        precision=precision,
        extra={**info.extra, "coreml": {"deployment_target": target, "compute": compute}},
    )
    mlmodel.user_defined_metadata[METADATA_KEY] = stored.to_json()
    mlmodel.short_description = f"{info.model} ({precision}) exported by edgevt"
    mlmodel.author = "edgevt"
    with atomic_dir(out) as tmp:
        mlmodel.save(str(tmp))
    counted = census(out)
    unexpected = [
        f"{name} ({done.owners.get(name, 'no module found')})"
        for name in float_ops_not_asked(counted, precision)
        if done.owners.get(name) not in done.kept
    ]
    return CoreMLExport(
        path=out,
        precision=precision,
        deployment_target=target,
        compute_precision=compute,
        info=stored,
        census=counted,
        unexpected_float=unexpected,
        kept_float=done.kept,
        activation_keys=done.keys,
        notes=done.notes,
    )


def _check_request(out: Path, info: ArtifactInfo, precision: str, table, example):
    """Refuse what cannot be exported; returns the example input to use."""
    if out.suffix != ".mlpackage":
        raise EdgevtError(f"a Core ML package must be named *.mlpackage, not {out.name}.")
    if precision == "w8a8":
        if table is None:
            raise EdgevtError(
                "Core ML w8a8 needs activation ranges: pass a calibration table (edgevt "
                f"calibrate {info.model} --data DIR -o calib/{info.model}.json)."
            )
        table.check_for(info.model)
    if example is None:
        size = info.preprocess.input_size
        return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    if example.ndim != 4 or example.shape[0] != 1:
        shape = tuple(example.shape)
        raise EdgevtError(f"the example input must be one image (1, 3, H, W), not {shape}.")
    return example


@dataclass
class _Quantized:
    kept: list[str] = field(default_factory=list)  # op names the config keeps in float
    keys: dict[str, str] = field(default_factory=dict)  # "mil_op.input" -> table key
    owners: dict[str, str] = field(default_factory=dict)  # MIL op -> quantizable op name
    notes: list[str] = field(default_factory=list)


def _quantize(ct, mlmodel, model, example, precision, table, config):
    """w8: int8 weights; w8a8: quantize/dequantize on the op inputs first, then int8 weights."""
    ops = _quant_ops(model, example, table)
    config = config or QuantConfig(op_type={})
    done = _Quantized(kept=sorted(n for n, t in ops.items() if config.resolve(n, t) is None))
    params = _parameter_names(model)
    if precision == "w8a8":
        plan, done.keys, done.owners, done.notes = _activation_plan(
            mlmodel, model, example, table, ops, done.kept, params
        )
        mlmodel = _insert_qdq(ct, mlmodel, plan)
    mlmodel = _quantize_weights(ct, mlmodel, params, ops, config)
    done.owners.update(_weight_owners(mlmodel._mil_program, params))
    return mlmodel, done


def _convert(ct, model: nn.Module, example: torch.Tensor, compute: str, target: str):
    try:
        with torch.no_grad():
            exported = torch.export.export(model, (example,)).run_decompositions({})
    except Exception as exc:
        raise EdgevtError(f"torch.export could not trace the model for Core ML: {exc}") from exc
    try:
        with _quiet():
            return ct.convert(
                exported,
                convert_to="mlprogram",
                inputs=[
                    ct.TensorType(name=INPUT_NAME, shape=tuple(example.shape), dtype=np.float32)
                ],
                outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
                minimum_deployment_target=getattr(ct.target, target),
                compute_precision=(
                    ct.precision.FLOAT32 if compute == "fp32" else ct.precision.FLOAT16
                ),
            )
    except Exception as exc:
        raise EdgevtError(f"coremltools could not convert the model: {exc}") from exc


def _quant_ops(model: nn.Module, example: torch.Tensor, table: CalibrationTable | None):
    """{op name: op type} of the model's quantizable ops (from the table when it lists them)."""
    if table is not None and table.ops:
        return table.ops
    from edgevt.quant.calibrate import trace_ops

    return {op.name: op.op_type for op in trace_ops(model, example)}


def _parameter_names(model: nn.Module) -> dict[str, str]:
    """The exported program's name of each weight (``p_stem_conv1_weight``) -> module path."""
    return {
        "p_" + name.replace(".", "_"): name.rsplit(".", 1)[0]
        for name, _ in model.named_parameters()
        if name.endswith(".weight")
    }


def _module_of_const(const_name: str, params: dict[str, str]) -> str | None:
    """Module of a MIL weight constant: its name is the parameter's, plus suffixes that
    coremltools adds (``_to_fp16``, ``_quantized``...)."""
    best = None
    for pname, module in params.items():
        if const_name == pname or const_name.startswith(pname + "_"):
            if best is None or len(pname) > len(best[0]):
                best = (pname, module)
    return best[1] if best else None


def _weight_source(var) -> str | None:
    """Name of the constant behind a MIL weight var (through constexpr ops), or None."""
    op = var.op
    while op is not None and op.op_type.startswith("constexpr_"):
        inputs = [v for v in op.inputs.values() if hasattr(v, "op")]
        op = inputs[0].op if inputs else None
    return op.name if op is not None and op.op_type == "const" else None


def _activation_plan(mlmodel, model, example, table, ops, kept, params):
    """{MIL op output name: {input name: (table key, scale)}}, the table key of each quantized
    operand, the quantizable op (table name) of each MIL op, and notes on what was not mapped."""
    operands, owners, notes = _weighted_operands(mlmodel._mil_program, ops, params)
    matmuls, matmul_owners, matmul_notes = _matmul_operands(mlmodel, model, example)
    owners.update(matmul_owners)
    notes += matmul_notes
    plan: dict[str, dict[str, tuple[str, float]]] = {}
    keys: dict[str, str] = {}
    for (name, inp), key in {**operands, **matmuls}.items():
        if owners[name] in kept:
            continue
        r = table.activations.get(key)
        if r is None:
            notes.append(f"{name}.{inp}: the table has no range for {key}; left in float")
            continue
        plan.setdefault(name, {})[inp] = (key, activation_scale(r.min, r.max))
        keys[f"{name}.{inp}"] = key
    return plan, keys, owners, notes


def _weighted_operands(prog, ops: dict[str, str], params: dict[str, str]):
    """Activation operand of each conv/linear (and const-weight matmul) -> ``<module>:in0``,
    the module being the one whose parameter the weight constant is named after."""
    operands: dict[tuple[str, str], str] = {}
    owners: dict[str, str] = {}
    notes: list[str] = []
    for op in _compute_ops(prog):
        name = op.outputs[0].name
        consts = [k for k in ("weight", "y") if k in op.inputs and _is_const(op.inputs[k])]
        weight = consts[0] if consts else None
        activation = next((k for k in ("x", "y") if k in op.inputs and k != weight), None)
        if weight is None or activation is None:
            continue
        module = _module_of_const(_weight_source(op.inputs[weight]) or "", params)
        if module is None or ops.get(module) not in ("Conv2d", "Linear"):
            notes.append(f"{name} ({op.op_type}): no Conv2d/Linear owns its weight; left in float")
            continue
        owners[name] = module
        operands[(name, activation)] = f"{module}:in0"
    return operands, owners, notes


def _matmul_operands(mlmodel, model, example):
    """Each operand of an activation x activation matmul -> its table key.

    Matmuls have no names to go by. Both graphs keep execution order, so the i-th MIL matmul
    is paired with the i-th traced product; values then decide which operand is ``in0`` and
    which ``in1`` and confirm the pair (sorted values agree to ``MATCH_TOLERANCE``: layout
    transposes do not matter). Sorted values alone cannot tell apart the near-uniform
    attention maps of different blocks of a random-init CvT; the order can. An operand whose
    pair does not check out takes the closest tensor of any matmul, with a note.
    """
    from edgevt.targets.coreml.mil_interpreter import MilProgram

    mil = []
    for op in _compute_ops(mlmodel._mil_program):
        inputs = [op.inputs[k] for k in ("x", "y") if k in op.inputs]
        if op.op_type == "matmul" and not any(_is_const(v) for v in inputs):
            mil.append((op.outputs[0].name, {"x": op.inputs["x"].name, "y": op.inputs["y"].name}))
    if not mil:
        return {}, {}, []
    needed = {var for _, operands in mil for var in operands.values()}
    values = MilProgram(mlmodel.package_path).trace({INPUT_NAME: example.numpy()}, needed)
    captured = _torch_operands(model, example)
    traced = list(dict.fromkeys(key.rsplit(":", 1)[0] for key in captured))
    notes = []
    if len(traced) != len(mil):
        notes.append(
            f"{len(mil)} matmuls in the Core ML program but {len(traced)} in the model; "
            "operands matched by value only"
        )
        traced = [None] * len(mil)
    operands: dict[tuple[str, str], str] = {}
    owners: dict[str, str] = {}
    for (name, inputs), op_name in zip(mil, traced, strict=True):
        flat = {k: np.sort(values[v].reshape(-1)) for k, v in inputs.items()}
        keys = _pair_keys(flat, captured, op_name)
        for inp, key in keys.items():
            if key is None:
                key = _match_key(flat[inp], captured)
                if key is None:
                    notes.append(f"{name}.{inp}: no table tensor matches it; left in float")
                    continue
                if op_name is not None:
                    notes.append(f"{name}.{inp}: matched {key} by value, not by order")
            operands[(name, inp)] = key
            owners[name] = key.rsplit(":", 1)[0]
    return operands, owners, notes


def _pair_keys(flat: dict[str, np.ndarray], captured: dict[str, np.ndarray], op_name):
    """{"x": key, "y": key} for a MIL matmul paired with traced op ``op_name``: the operand
    assignment (straight or swapped) with the smaller error, None where it is off."""
    if op_name is None:
        return {"x": None, "y": None}
    in0, in1 = captured[f"{op_name}:in0"], captured[f"{op_name}:in1"]
    straight = (_sorted_error(flat["x"], in0), _sorted_error(flat["y"], in1))
    swapped = (_sorted_error(flat["x"], in1), _sorted_error(flat["y"], in0))
    errors, keys = (
        (straight, ("in0", "in1")) if sum(straight) <= sum(swapped) else (swapped, ("in1", "in0"))
    )
    return {
        inp: f"{op_name}:{key}" if err < MATCH_TOLERANCE else None
        for inp, key, err in zip(("x", "y"), keys, errors, strict=True)
    }


def _sorted_error(a: np.ndarray, b: np.ndarray) -> float:
    """Relative L2 distance of two sorted value lists (inf when their sizes differ)."""
    if a.size != b.size:
        return float("inf")
    return float(np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-12))


def activation_scale(lo: float, hi: float) -> float:
    """Core ML's int8 activation scale for a range: symmetric, zero point 0, [-127, 127]
    (``linear_quantize_activations`` in mode linear_symmetric). A zero range gets scale 1."""
    amax = max(abs(lo), abs(hi))
    return amax / 127.0 if amax > 0 else 1.0


def _compute_ops(prog) -> list:
    return [op for op in prog.functions["main"].operations if op.op_type in COMPUTE_OPS]


def _is_const(var) -> bool:
    op = var.op
    return op is not None and (op.op_type == "const" or op.op_type.startswith("constexpr_"))


def _torch_operands(model: nn.Module, example: torch.Tensor) -> dict[str, np.ndarray]:
    """Every matmul operand of the model on ``example``, sorted, by table key."""
    from edgevt.quant.calibrate import OpTracer

    found: dict[str, np.ndarray] = {}

    def record(op, inputs, output) -> None:
        if op.op_type == "matmul":
            for key, x in zip(op.input_keys, inputs, strict=True):
                found[key] = np.sort(x.detach().float().numpy().reshape(-1))

    with torch.no_grad(), OpTracer(model, on_op=record):
        model(example)
    return found


def _match_key(flat: np.ndarray, captured: dict[str, np.ndarray]) -> str | None:
    """The table key whose (sorted) PyTorch tensor is closest to ``flat``, within tolerance."""
    errors = {key: _sorted_error(flat, ref) for key, ref in captured.items()}
    best = min(errors, key=errors.get, default=None)
    return best if best is not None and errors[best] < MATCH_TOLERANCE else None


def _insert_qdq(ct, mlmodel, plan: dict[str, dict[str, tuple[str, float]]]):
    """Put quantize -> dequantize (int8, per tensor, the table's scale) before each planned
    operand; returns a new MLModel."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
    from coremltools.converters.mil.mil.passes.helper import block_context_manager
    from coremltools.models.utils import _apply_graph_pass

    class InsertQDQ(AbstractGraphPass):
        def apply(self, prog) -> None:
            for func in prog.functions.values():
                self._block(func)

        @block_context_manager
        def _block(self, block) -> None:
            for op in list(block.operations):
                todo = plan.get(op.outputs[0].name)
                if not todo:
                    continue
                new = {}
                for inp, (_, scale) in todo.items():
                    x = op.inputs[inp]
                    dtype = np.float16 if x.dtype == types.fp16 else np.float32
                    s = np.array(scale, dtype=dtype)
                    if s == 0 or not np.isfinite(s):  # an fp16 underflow/overflow of the scale
                        s = np.array(1.0, dtype=dtype)
                    base = f"{op.outputs[0].name}_{inp}"
                    with mb.set_before_op(op):
                        q = mb.quantize(input=x, scale=s, output_dtype="int8", name=base + "_q")
                        new[inp] = mb.dequantize(input=q, scale=s, name=base + "_dq")
                op.set_inputs(**new)

    with _quiet():
        return _apply_graph_pass(
            mlmodel, InsertQDQ(), spec_version=ct.target.iOS17.value, skip_model_load=True
        )


def _quantize_weights(ct, mlmodel, params: dict[str, str], ops: dict[str, str], config):
    """int8 symmetric weights, per output channel unless the config says per tensor; the
    weights of modules the config keeps in float stay as they are."""
    import coremltools.optimize as cto

    def linear(granularity: str = "per_channel"):
        return cto.coreml.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity=granularity, weight_threshold=0
        )

    # Weights are named one by one: coremltools deduplicates equal constants, so a bias or a
    # norm's beta may be shared with a linear op, and per-op-type configs then conflict.
    by_name: dict[str, Any] = {}
    for op in _compute_ops(mlmodel._mil_program):
        for key in ("weight", "y"):
            if key in op.inputs and _is_const(op.inputs[key]):
                const = _weight_source(op.inputs[key])
                module = _module_of_const(const or "", params)
                setting = config.resolve(module, ops[module]) if module in ops else OpQuant()
                if const:
                    by_name[const] = None if setting is None else linear(setting.weights)
    opt = cto.coreml.OptimizationConfig(global_config=None, op_name_configs=by_name)
    # All-zero channels (Lite0 has some) divide 0 by a 0 scale inside coremltools: harmless
    # (they dequantize to 0) but noisy.
    with np.errstate(divide="ignore", invalid="ignore"), _quiet():
        return cto.coreml.linear_quantize_weights(mlmodel, opt)


def _weight_owners(prog, params: dict[str, str]) -> dict[str, str]:
    """MIL compute op -> the module whose weight it uses."""
    owners = {}
    for op in _compute_ops(prog):
        for key in ("weight", "y"):
            if key in op.inputs and _is_const(op.inputs[key]):
                module = _module_of_const(_weight_source(op.inputs[key]) or "", params)
                if module is not None:
                    owners[op.outputs[0].name] = module
    return owners
