"""`edgevt debug` for Core ML w8a8 packages: every quantized operand read back from the MIL
program, run by edgevt's MIL reference interpreter.

The export puts ``quantize`` -> ``dequantize`` before each operand it quantizes and records
which table key each operand (``<op output>.<input>``) is (``activation_keys`` in the
manifest). A key's value is its ``dequantize`` output, the float
before its ``quantize`` the value the simulation's rule is applied to; a conv or linear op's
own output is its ``:out``. The program is NCHW like PyTorch, so no layout changes; values an
fp16 program stores in fp16 come back as float32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgevt.errors import EdgevtError
from edgevt.probes import GridParams, Points, Probe


class CoremlProbe(Probe):
    runtime = "edgevt's MIL reference interpreter (each value rounded to the dtype it is stored in)"
    drift = ("rounding-boundary flips upstream, amplified, and fp16 arithmetic (a w8a8 program "
             "computes in fp16, the simulation in fp32)")

    def __init__(self, path: Path, table: Any, details: dict[str, Any],
                 threads: int | None = None) -> None:  # fmt: skip
        from edgevt.targets.coreml.mil_interpreter import MilProgram

        keys = details.get("activation_keys")
        if not isinstance(keys, dict) or not keys:
            raise EdgevtError(
                f"{path.name}: the run does not record which MIL operand holds which table key "
                "(exported by an older edgevt); export it again to debug it."
            )
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.program = MilProgram(path)
        producer = {out: op for op in self.program.ops for out in op.outputs}
        self.points = Points({}, {}, [])
        self.grids: dict[str, GridParams] = {}
        for operand, key in keys.items():
            name, _, inp = str(operand).rpartition(".")
            q, dq = _quantized_operand(producer, name, inp)
            if q is None or dq is None:
                self.points.unmapped.append(f"{key}: no quantize/dequantize before {name}")
                continue
            self.points.value[key] = dq.outputs[0]
            self.points.before_q[key] = q.args["input"][0].name
            self.points.int8.add(key)
            scale = float(np.asarray(q.c("scale"), dtype=np.float64).reshape(-1)[0])
            self.grids[key] = GridParams(scale, 0.0, -128, 127)
            out_key = f"{key.rsplit(':', 1)[0]}:out"
            if key.endswith(":in0") and out_key in table.activations and name in producer:
                self.points.value[out_key] = name  # the conv/linear op's own output
        self.names = {*self.points.value.values(), *self.points.before_q.values()}
        self.output = self.program.outputs[0]
        shape = next(iter(self.program.inputs.values()))[1]
        self.folded = shape is not None and shape[:1] == (1,)  # batch 1 program, N images

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        name = next(iter(self.program.inputs))
        values = self.program.trace({name: batch}, {*self.names, self.output})
        if self.folded:  # (N, 1, ...) -> (N, ...): the program's own batch axis of 1
            values = {k: v.reshape(v.shape[0], *v.shape[2:]) for k, v in values.items()}
        logits = values[self.output].reshape(len(batch), -1).astype(np.float32)
        return logits, {k: np.asarray(v, dtype=np.float32) for k, v in values.items()}


def _quantized_operand(producer: dict[str, Any], name: str, inp: str) -> tuple[Any, Any]:
    """The (quantize, dequantize) ops that feed input ``inp`` of the op writing ``name``; the
    export names them ``<name>_<inp>_q``/``_dq``, but ops that read one tensor may share the
    first pair (coremltools merges equal ones)."""
    op = producer.get(name)
    refs = op.args.get(inp) if op is not None else None
    dq = producer.get(refs[0].name) if refs and not refs[0].is_const else None
    if dq is None or dq.type != "dequantize":
        return None, None
    q = producer.get(dq.args["input"][0].name)
    return (q, dq) if q is not None and q.type == "quantize" else (None, None)
