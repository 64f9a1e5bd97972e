"""Calibration: observe the fused PyTorch model on real images, produce a CalibrationTable.

The quantizable ops are found by running the model once: Conv2d/Linear modules through
forward hooks, and matmul/einsum products through a ``TorchFunctionMode`` that knows which
module's forward is running. Names therefore follow module paths (stable across exports), and
the same tracer drives calibration, sensitivity analysis and fake quantization.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from edgevt.errors import DataError, EdgevtError, path_problem
from edgevt.quant.observers import DEFAULT_PERCENTILE, METHODS, RangeObserver
from edgevt.quant.table import CalibrationTable, TensorRange

MATMULS = {
    torch.matmul,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
    torch.bmm,
    torch.Tensor.bmm,
    torch.einsum,
}
WEIGHTED = {nn.Conv2d: "Conv2d", nn.Linear: "Linear"}


@dataclass(frozen=True)
class QuantOp:
    """One quantizable op: a Conv2d/Linear module, or the i-th product a module computes."""

    name: str
    op_type: str  # Conv2d | Linear | matmul

    @property
    def input_keys(self) -> list[str]:
        n = 2 if self.op_type == "matmul" else 1
        return [f"{self.name}:in{i}" for i in range(n)]

    @property
    def output_key(self) -> str:
        return f"{self.name}:out"


def weighted_op_type(module: nn.Module) -> str | None:
    return next((t for cls, t in WEIGHTED.items() if isinstance(module, cls)), None)


def matmul_operands(func: Callable, args: tuple) -> list[torch.Tensor] | None:
    if func is torch.einsum:
        operands = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
    else:
        operands = args[:2]
    tensors = [t for t in operands if isinstance(t, torch.Tensor)]
    return tensors if len(tensors) == 2 else None


class OpTracer:
    """Context manager calling ``on_op(op, inputs, output)`` for every quantizable op run.

    ``rewrite(op, inputs)`` may return replacement inputs and ``rewrite_output(op, output)`` a
    replacement output of a Conv2d/Linear module (fake quantization and QAT use them).
    """

    def __init__(
        self,
        model: nn.Module,
        on_op: Callable[[QuantOp, list[torch.Tensor], torch.Tensor | None], None] | None = None,
        rewrite: Callable[[QuantOp, list[torch.Tensor]], list[torch.Tensor]] | None = None,
        rewrite_output: Callable[[QuantOp, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.model = model
        self.on_op = on_op
        self.rewrite = rewrite
        self.rewrite_output = rewrite_output
        self.stack: list[str] = []
        self.counts: dict[str, int] = defaultdict(int)
        self.ops: dict[str, QuantOp] = {}
        self._handles: list[Any] = []
        self._mode: _MatmulMode | None = None

    def __enter__(self) -> OpTracer:
        for name, module in self.model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post(name, module)))
        self._mode = _MatmulMode(self)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._mode is not None
        self._mode.__exit__(*exc)
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _op(self, name: str, op_type: str) -> QuantOp:
        op = self.ops.get(name)
        if op is None:
            op = self.ops[name] = QuantOp(name, op_type)
        return op

    def _pre(self, name: str):
        def hook(module: nn.Module, args: tuple):
            self.stack.append(name)
            self.counts[name] = 0
            op_type = weighted_op_type(module)
            op = self._op(name, op_type) if op_type else None
            if op is not None and self.rewrite is not None and args:
                new = self.rewrite(op, [args[0]])
                return (new[0], *args[1:])
            return None

        return hook

    def _post(self, name: str, module: nn.Module):
        op_type = weighted_op_type(module)

        def hook(module: nn.Module, args: tuple, output: Any):
            self.stack.pop()
            if op_type and self.on_op is not None and args:
                self.on_op(self._op(name, op_type), [args[0]], output)
            if op_type and self.rewrite_output is not None and isinstance(output, torch.Tensor):
                return self.rewrite_output(self._op(name, op_type), output)
            return None

        return hook


class _MatmulMode(TorchFunctionMode):
    def __init__(self, tracer: OpTracer) -> None:
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        t = self.tracer
        operands = matmul_operands(func, args) if func in MATMULS and t.stack else None
        if operands is None:
            return func(*args, **kwargs)
        owner = t.stack[-1]
        op = t._op(f"{owner}@matmul{t.counts[owner]}", "matmul")
        t.counts[owner] += 1
        if t.rewrite is not None:
            new = t.rewrite(op, operands)
            args = _replace_operands(func, args, new)
        out = func(*args, **kwargs)
        if t.on_op is not None:
            t.on_op(op, operands, out)
        return out


def _replace_operands(func: Callable, args: tuple, new: list[torch.Tensor]) -> tuple:
    if func is torch.einsum:
        if len(args) == 2 and isinstance(args[1], (list, tuple)):
            return (args[0], list(new))
        return (args[0], *new)
    return (*new, *args[2:])


def trace_ops(model: nn.Module, example: torch.Tensor) -> list[QuantOp]:
    """The quantizable ops of ``model``, in execution order."""
    with torch.no_grad(), OpTracer(model) as tracer:
        model(example)
    return list(tracer.ops.values())


def weight_amax(module: nn.Module) -> torch.Tensor:
    """Max |w| per output channel (dim 0 of Conv2d and Linear weights)."""
    w = module.weight.detach()
    return w.abs().reshape(w.shape[0], -1).amax(dim=1)


def calibrate_model(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    model_name: str,
    weights: str,
    method: str = "percentile",
    percentile: float = DEFAULT_PERCENTILE,
    source: dict[str, Any] | None = None,
) -> CalibrationTable:
    """Run ``batches`` through ``model`` (fused, eval) and derive ranges with ``method``."""
    if method not in METHODS:
        raise EdgevtError(
            f"unknown calibration method {method!r}; choose from {', '.join(METHODS)}."
        )
    observers: dict[str, RangeObserver] = defaultdict(RangeObserver)

    def observe(op: QuantOp, inputs: list[torch.Tensor], output: torch.Tensor | None) -> None:
        for key, x in zip(op.input_keys, inputs, strict=True):
            observers[key].observe(x)
        if op.op_type != "matmul" and isinstance(output, torch.Tensor):
            observers[op.output_key].observe(output)

    start, n = time.perf_counter(), 0
    model.eval()
    with torch.no_grad(), OpTracer(model, on_op=observe) as tracer:
        for batch in batches:
            model(batch)
            n += len(batch)
    if n == 0:
        raise DataError("no calibration images were read.")
    acts = {}
    for key, obs in observers.items():
        try:
            lo, hi = obs.range(method, percentile)
        except ValueError as exc:
            raise EdgevtError(f"calibrating {key}: {exc}") from exc
        acts[key] = TensorRange(lo, hi, obs.min, obs.max)
    modules = dict(model.named_modules())
    weight_ranges = {
        op.name: [round(float(v), 8) for v in weight_amax(modules[op.name])]
        for op in tracer.ops.values()
        if op.op_type != "matmul"
    }
    meta = dict(source or {})
    meta.update(
        {
            "images": n,
            "seconds": round(time.perf_counter() - start, 1),
            "ops": {op.name: op.op_type for op in tracer.ops.values()},
        }
    )
    if method == "percentile":
        meta["percentile"] = percentile
    return CalibrationTable(model_name, weights, method, acts, weight_ranges, meta)


def calibration_batches(
    preprocess, folder: str | Path, n: int, batch_size: int = 32, progress: bool = True
) -> Iterable[torch.Tensor]:
    """Up to ``n`` images from any image folder (labels optional), as float tensors."""
    from tqdm import tqdm

    from edgevt.data.imagenet import open_dataset

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(
            path_problem(folder, "calibration folder", folder=True)
            + "; pass a folder of images."
        )
    dataset = open_dataset(folder, require_labels=False).subset(n)
    if len(dataset) == 0:
        raise DataError(f"calibration folder {folder} holds no images (.jpg/.jpeg/.png...).")
    if len(dataset) < n:  # not an error (TensorRT's calibrators also take what there is)
        print(
            f"note: calibrating on the {len(dataset)} images {folder} holds (--calib-size {n} "
            "asked for more); the table records the number used",
            file=sys.stderr,
        )
    with tqdm(total=len(dataset), desc="calibrate", unit="img", disable=not progress) as bar:
        for images, _ in dataset.batches(preprocess, batch_size):
            yield torch.from_numpy(images)
            bar.update(len(images))


def quantized_keys(model: nn.Module, preprocess) -> set[str]:
    """The input keys of the model's quantizable ops (a table of another version lacks some)."""
    size = preprocess.input_size
    return {k for op in trace_ops(model, torch.zeros(1, 3, size, size)) for k in op.input_keys}
