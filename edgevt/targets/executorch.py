"""ExecuTorch: PyTorch's own edge runtime (Android, iOS, Linux ARM), ``.pte`` programs whose
ops are lowered to the XNNPACK delegate.

fp32: ``torch.export`` of the fused model, ``to_edge_transform_and_lower`` with XNNPACK's
partitioner, ``to_executorch``. int8: PyTorch's pt2e flow with ExecuTorch's
``XNNPACKQuantizer`` (int8 asymmetric activations, int8 symmetric weights, per channel unless
the quant config says per tensor), its activation observers set **from the CalibrationTable**
(each observer is matched to the table key of the conv/linear it feeds or follows) and checked
after conversion, like TFLite's; the few tensors the table has no key for (a pooled output)
are ranged on the table's own calibration images. Matmuls stay float: XNNPACK's quantizer has
no int8 matmul, which is also edgevt's default.

The program takes one image (batch 1, what edge apps run); the runner feeds a batch image by
image. edgevt's ArtifactInfo travels in the program as a constant method ``edgevt_info``
(UTF-8 bytes of its JSON). Found on this machine (``../shared/FINDINGS.md``): resetting
ExecuTorch's thread pool and then mixing PyTorch eager ops and ExecuTorch in one process can
deadlock (both link their own ``pthreadpool``), so the runner resets it only when asked for a
thread count, and ``edgevt bench`` times every file in its own process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgevt.artifact import ArtifactInfo
from edgevt.errors import EdgevtError
from edgevt.targets import register_target
from edgevt.targets.base import (
    Artifact,
    ExportContext,
    Quantization,
    Runner,
    Target,
    TargetOptions,
    TargetSpec,
    require_info,
)

if TYPE_CHECKING:
    import torch

    from edgevt.devices import DeviceProfile
    from edgevt.quant.config import QuantConfig
    from edgevt.quant.table import CalibrationTable

INFO_METHOD = "edgevt_info"
GAP_CALIBRATION_IMAGES = 64  # range what the table has no key for (as the TFLite target does)
MATCH_RTOL = 1e-5  # a quantize node's scale must equal the table's, up to float rounding
# ops that pass a tensor on unchanged in value: an observer before them ranges what the next
# conv/linear reads
_PASS_THROUGH = {"pad", "constant_pad_nd", "flatten", "view", "reshape", "permute", "transpose",
                 "contiguous", "clone", "dropout", "unsqueeze", "squeeze"}  # fmt: skip
_ACTIVATIONS = {"hardtanh", "relu", "clamp", "relu6"}  # XNNPACK fuses them into the conv
_WEIGHTED = {"conv2d", "linear", "convolution"}  # the ops the table keys by module


def _require() -> None:
    from edgevt.targets.base import missing_modules

    if missing_modules("executorch", "torchao"):
        raise EdgevtError(
            "ExecuTorch is not installed: pip install 'edgevt[executorch]'"
        )  # fmt: skip


# ---------------------------------------------------------------- writing and reading .pte


DELEGATES = ("xnnpack", "coreml")
NAMES = {"xnnpack": "XNNPACK", "coreml": "Core ML"}


def _partitioner(delegate: str) -> Any:
    if delegate == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return XnnpackPartitioner()
    import coremltools as ct
    from executorch.backends.apple.coreml.compiler import CoreMLBackend
    from executorch.backends.apple.coreml.partition import CoreMLPartitioner

    # fp32 compute (Core ML's default is fp16); iOS17 is the first with int8 activations; an
    # ML Program package (not compiled), so the program can be checked here and compiled on
    # the device
    specs = CoreMLBackend.generate_compile_specs(
        compute_precision=ct.precision.FLOAT32,
        minimum_deployment_target=ct.target.iOS17,
        model_type=CoreMLBackend.MODEL_TYPE.MODEL,
    )
    return CoreMLPartitioner(compile_specs=specs)


def lower(exported: Any, info: ArtifactInfo, path: Path, delegate: str = "xnnpack") -> dict:
    """Lower an ``ExportedProgram`` to ``delegate`` (XNNPACK or Core ML), write the ``.pte``
    (whole or not at all) with ``info`` in it, and return how much of the graph it took."""
    import torch
    from executorch.exir import to_edge_transform_and_lower

    from edgevt.io import atomic_path
    from edgevt.targets.coreml.runner import quiet  # coremltools' bars and Linux warnings

    blob = torch.tensor(list(info.to_json().encode()), dtype=torch.uint8)
    with quiet():
        edge = to_edge_transform_and_lower(
            exported, partitioner=[_partitioner(delegate)], constant_methods={INFO_METHOD: blob}
        )
    delegation = _delegation(edge.exported_program().graph_module, delegate)
    program = edge.to_executorch()
    with atomic_path(path) as tmp:
        tmp.write_bytes(program.buffer)
    return delegation


def _delegation(graph_module: Any, delegate: str) -> dict[str, Any]:
    """Ops the delegate runs and ops left to ExecuTorch's portable kernels (by op name)."""
    delegated, portable = 0, {}
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if "executorch_call_delegate" in name:
            lowered = getattr(graph_module, node.args[0].target)
            delegated += sum(n.op == "call_function"
                             for n in lowered.original_module.graph.nodes)  # fmt: skip
        elif name != "getitem":
            op = name.removeprefix("aten.").split(".")[0]  # aten.mean.dim -> mean
            portable[op] = portable.get(op, 0) + 1
    total = delegated + sum(portable.values())
    return {
        "delegate": delegate,
        "delegated_ops": delegated,
        "portable_ops": portable,
        "delegated_share": delegated / total if total else 1.0,
    }


@contextlib.contextmanager
def _runtime_log() -> Iterator[list[str]]:
    """ExecuTorch's C++ runtime logs to stderr (cpuinfo probing on every load, errors as log
    lines before a terse exception): keep it off the user's terminal, and hand the lines to
    the caller for its error message."""
    import os
    import sys
    import tempfile

    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            lines += log.read().decode(errors="replace").splitlines()


def _load(path: Path, method: str) -> Any:
    """One method of the program at ``path``, loaded; a file ExecuTorch refuses is named."""
    from executorch.runtime import Runtime

    with _runtime_log() as log:
        try:
            program = Runtime.get().load_program(str(path))
            return None if method not in program.method_names else program.load_method(method)
        except (RuntimeError, ValueError) as exc:
            failure = exc
    said = [line.split("] ", 1)[-1] for line in log if "cpuinfo" not in line][-2:]
    raise EdgevtError(
        f"ExecuTorch cannot load {path} (corrupt or truncated?): "
        f"{' '.join(' '.join([str(failure), *said]).split())[:300]} — export it again."
    ) from failure


def read_pte_info(path: Path) -> ArtifactInfo | None:
    """The ArtifactInfo a ``.pte`` written by edgevt carries (None for another program)."""
    _require()
    method = _load(path, INFO_METHOD)
    if method is None:
        return None
    blob = method.execute([])[0]
    return ArtifactInfo.from_json(bytes(blob.numpy().tobytes()).decode(), str(path))


def _forward_plan(path: Path) -> tuple[Any, Any]:
    """The program's flatbuffer and its ``forward`` execution plan."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    try:
        program = deserialize_pte_binary(path.read_bytes()).program
    except Exception as exc:  # the flatbuffer reader raises whatever it tripped on
        raise EdgevtError(
            f"{path} is not an ExecuTorch program (corrupt or truncated?): {exc} — export it again."
        ) from exc
    return program, next(p for p in program.execution_plan if p.name == "forward")


def read_delegates(path: Path) -> tuple[list[str], list[str]]:
    """The delegates ``forward`` calls (``XnnpackBackend``, ``CoreMLBackend``) and the ops it
    leaves to portable kernels."""
    _, plan = _forward_plan(path)
    return [d.id for d in plan.delegates], [op.name for op in plan.operators]


def coreml_package(path: Path, folder: Path) -> Path:
    """The Core ML package a Core ML-delegated ``.pte`` embeds, unpacked into ``folder``: the
    model Core ML compiles on the Apple device."""
    from edgevt.targets.coreml.runner import quiet

    with quiet():  # the package imports coremltools
        from executorch.backends.apple.coreml import executorchcoreml
    program, plan = _forward_plan(path)
    (delegate,) = plan.delegates
    blob = program.backend_delegate_data[delegate.processed.index].data
    if not executorchcoreml.unflatten_directory_contents(bytes(blob), str(folder)):
        raise EdgevtError(f"{path}: its Core ML delegate data does not unpack — export it again.")
    (package,) = folder.glob("*/model.mlpackage")
    return package


class ExecutorchRunner(Runner):
    """ExecuTorch's runtime (XNNPACK on the CPU); ``threads`` None = its default pool.

    A program lowered to Core ML runs through ExecuTorch on macOS; elsewhere the Core ML
    model it embeds runs in edgevt's MIL reference interpreter (as the ``coreml`` target's
    packages do), which needs the whole graph in that one delegate.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import sys

        super().__init__()
        self.path = Path(path)
        self.threads = threads
        self.info = require_info(read_pte_info(self.path), self.path)
        delegates, portable = read_delegates(self.path)
        self.interpreted = "CoreMLBackend" in delegates and sys.platform != "darwin"
        if self.interpreted and (len(delegates) > 1 or portable):
            raise EdgevtError(
                f"{self.path} runs part of its graph outside Core ML ({', '.join(portable)}); "
                "edgevt's interpreter runs only a program Core ML takes whole: run it with "
                "ExecuTorch on macOS or iOS."
            )
        self.delegate = "Core ML" if "CoreMLBackend" in delegates else "XNNPACK"

    def _activate(self) -> None:
        if self.interpreted:
            import tempfile

            from edgevt.targets.coreml.runner import coremltools

            coremltools()  # imported quietly, before the interpreter imports its protobufs
            from edgevt.targets.coreml.mil_interpreter import MilProgram

            self._unpacked = tempfile.TemporaryDirectory(prefix="edgevt-pte-")
            self._program = MilProgram(coreml_package(self.path, Path(self._unpacked.name)))
            if self.threads:
                import torch

                torch.set_num_threads(self.threads)
            return
        if self.threads is not None:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(self.threads)
        self._method = _load(self.path, "forward")

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        if self.interpreted:
            (name,) = self._program.inputs
            (out,) = self._program.outputs
            chunks = [self._program.run({name: batch[i : i + 16]})[out]
                      for i in range(0, len(batch), 16)]  # fmt: skip
            return np.concatenate(chunks).astype(np.float32)
        # the program takes one image: what edge apps run, and what XNNPACK plans memory for
        return np.concatenate([
            self._method.execute([torch.from_numpy(batch[i : i + 1])])[0].numpy()
            for i in range(len(batch))
        ]).astype(np.float32)  # fmt: skip

    def _deactivate(self) -> None:
        self._method = self._program = None
        if self.interpreted:
            self._unpacked.cleanup()

    def describe(self) -> dict[str, Any]:
        from importlib import metadata

        backend = f"executorch {metadata.version('executorch')} ({self.delegate})"
        if self.interpreted:
            backend += ", its Core ML model run by edgevt's MIL reference interpreter"
        return {
            "backend": backend,
            "artifact": str(self.path),
            "model": self.info.model,
            "precision": self.info.precision,
            "threads": self.threads,
        }


# ---------------------------------------------------------------- int8 from the table


@dataclass
class PteQuantReport:
    """What the int8 program honours of the table and the quant config."""

    honoured: list[str] = field(default_factory=list)  # table keys whose scale is in the file
    not_honoured: list[str] = field(default_factory=list)  # "key: why"
    ranged_here: int = 0  # activation tensors the table has no key for, ranged on its images
    # conv/linear outputs stored after their fused ReLU/ReLU6, on the next op's input range
    fused: list[str] = field(default_factory=list)
    float_ops: list[str] = field(default_factory=list)  # table ops the config keeps float
    quantized_ops: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "honoured": len(self.honoured), "not_honoured": self.not_honoured,
            "ranged_here": self.ranged_here, "fused_activations": len(self.fused),
            "float_ops": self.float_ops,
            "quantized_ops": self.quantized_ops,
        }  # fmt: skip


def _module(node: Any) -> str | None:
    stack = node.meta.get("nn_module_stack")
    return list(stack.values())[-1][0] if stack else None


def _op(node: Any) -> str:
    return getattr(node.target, "__name__", str(node.target)).split(".")[0].rstrip("_")


def _table_key(observer: Any, table: CalibrationTable) -> str | None:
    """The table key of the tensor an activation observer ranges: the output of the
    conv/linear it follows, else the input of the conv/linear it feeds (through pads and
    reshapes)."""
    source = observer.args[0]
    if _fused_activation(observer):  # stored after the clip: the next op's input range
        pass
    elif source.op == "call_function" and _op(source) in _WEIGHTED:
        key = f"{_module(source)}:out"
        if key in table.activations:
            return key
    frontier, seen = list(observer.users), set()
    while frontier:
        node = frontier.pop(0)
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_module":  # another observer (a pad's, an activation's)
            frontier.extend(node.users)
            continue
        if node.op != "call_function":
            continue
        if _op(node) in _WEIGHTED and node.args[0] is not None:
            key = f"{_module(node)}:in0"
            if key in table.activations:
                return key
        elif _op(node) in _PASS_THROUGH or _op(node) in _ACTIVATIONS:
            frontier.extend(node.users)
    return None


def _fused_activation(observer: Any) -> bool:
    """A conv/linear output that only a ReLU/ReLU6 reads: XNNPACK fuses the clip into the
    conv, and the int8 program stores the clipped output on the activation's range."""
    source = observer.args[0]
    return (source.op == "call_function" and _op(source) in _WEIGHTED and bool(observer.users)
            and all(_op(u) in _ACTIVATIONS for u in observer.users))  # fmt: skip


def _quantizer(table: CalibrationTable, config: QuantConfig) -> tuple[Any, list[str], int]:
    """XNNPACK's quantizer with min/max activation observers (the table is min/max ranges),
    per-channel or per-tensor weights and float ops as ``config`` says."""
    import dataclasses

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.observer import MinMaxObserver

    def spec(per_channel: bool) -> Any:
        base = get_symmetric_quantization_config(is_per_channel=per_channel)
        act = dataclasses.replace(
            base.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12)
        )
        return dataclasses.replace(base, input_activation=act, output_activation=act)

    quantizer = XNNPACKQuantizer().set_global(spec(per_channel=True))
    float_ops, quantized = [], 0
    for name, op_type in sorted(table.ops.items()):
        if op_type == "matmul":
            continue  # XNNPACK's quantizer leaves matmuls float
        chosen = config.resolve(name, op_type)
        if chosen is None:
            # set_module_name refuses None, but the quantizer's own loop skips a module whose
            # config is None and keeps the global config off it: that module stays float
            quantizer.module_name_config[name] = None
            float_ops.append(name)
        else:
            quantized += 1
            if chosen.weights == "per_tensor":
                quantizer.set_module_name(name, spec(per_channel=False))
    return quantizer, float_ops, quantized


def quantize(
    model: torch.nn.Module, example: torch.Tensor, table: CalibrationTable,
    config: QuantConfig, gap_images: Iterable[torch.Tensor],
) -> tuple[Any, PteQuantReport]:  # fmt: skip
    """The fused ``model`` quantized by XNNPACK's rules with the table's ranges: a converted
    pt2e graph module, and what it honoured."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer, float_ops, quantized = _quantizer(table, config)
    graph = torch.export.export(model, (example,)).module()
    prepared = prepare_pt2e(graph, quantizer)
    observers = [n for n in prepared.graph.nodes if n.op == "call_module"
                 and "activation_post_process" in str(n.target)]  # fmt: skip
    activations = {n: _table_key(n, table) for n in observers if not _is_weight(n)}
    report = PteQuantReport(float_ops=float_ops, quantized_ops=quantized)
    report.ranged_here = sum(k is None for k in activations.values())
    report.fused = sorted(f"{_module(n.args[0])}:out" for n in activations if _fused_activation(n))
    with torch.no_grad():  # weights always; the unkeyed activations on the table's images
        prepared(example)
        if report.ranged_here:  # image by image: the exported graph is batch 1
            for batch in gap_images:
                for image in batch.split(1):
                    prepared(image)
    for node, key in activations.items():
        if key is not None:
            observer, r = getattr(prepared, node.target), table.activations[key]
            observer.reset_min_max_vals()
            observer(torch.tensor([r.min, r.max], dtype=torch.float32))
    sources = {node.args[0].name: key for node, key in activations.items() if key}
    converted = convert_pt2e(prepared)
    _check_scales(converted, sources, table, report)
    return converted, report


def fold_quantized_constants(converted: Any) -> int:
    """Replace each int8 constant stored on an activation grid (a zero point other than 0:
    LeViT's attention scale, its attention biases) by its float value; the count folded.

    For Core ML: coremltools folds ``dequantize`` of such a constant itself and gets the scalar
    ones wrong (LeViT's ``* key_dim ** -0.5``, int8 127 at zero point -128, came out as
    -0.00098 instead of 0.25: the zero point read as unsigned 128), which flipped the sign of
    every attention map. The float value is exactly what the int8 constant holds, so the
    program computes what XNNPACK's does."""
    import torch

    folded = 0
    for node in list(converted.graph.nodes):
        target = str(node.target)
        if node.op != "call_function" or "dequantize_per_tensor" not in target:
            continue
        source, scale, zero_point = node.args[:3]
        if source.op != "get_attr" or zero_point == 0:
            continue  # a runtime tensor, or a symmetric weight (Core ML takes those right)
        stored = getattr(converted, source.target)
        value = (stored.to(torch.float32) - zero_point) * scale
        name = f"_edgevt_float_{source.target}"
        converted.register_buffer(name, value)
        with converted.graph.inserting_before(node):
            replacement = converted.graph.get_attr(name)
        node.replace_all_uses_with(replacement)
        converted.graph.erase_node(node)
        folded += 1
    converted.graph.eliminate_dead_code()
    converted.recompile()
    return folded


def _is_weight(observer: Any) -> bool:
    source = observer.args[0]
    return source.op == "get_attr" or source.op == "placeholder" and "weight" in source.name


def _check_scales(
    converted: Any, sources: dict[str, str], table: CalibrationTable, report: PteQuantReport
) -> None:
    """Each keyed tensor's quantize node must carry the scale the table's range gives (int8
    asymmetric: (max - min) / 255 over a range that holds 0)."""
    found: dict[str, float] = {}
    for node in converted.graph.nodes:
        target = str(node.target)
        quantize = "quantize_per_tensor" in target and "dequantize" not in target
        if node.op == "call_function" and quantize and node.args[0].name in sources:
            found[sources[node.args[0].name]] = float(node.args[1])
    for key in sorted(set(sources.values())):
        r = table.activations[key]
        want = max((max(r.max, 0.0) - min(r.min, 0.0)) / 255, 2**-12)
        got = found.get(key)
        if got is None:
            report.not_honoured.append(f"{key}: no int8 tensor in the program")
        elif abs(got - want) > MATCH_RTOL * want:
            report.not_honoured.append(f"{key}: scale {got:.6g}, table {want:.6g}")
        else:
            report.honoured.append(key)


# ---------------------------------------------------------------- the target


@dataclass(frozen=True)
class ExecutorchOptions(TargetOptions):
    delegate: str | None = None


@register_target
class ExecutorchTarget(Target):
    spec = TargetSpec(
        name="executorch",
        description="ExecuTorch .pte lowered to XNNPACK (Android, iOS, ARM Linux) or Core ML "
        "(--delegate coreml); int8 by pt2e",
        suffixes=(".pte",),
        precisions=("fp32", "int8"),
        extra="executorch",
        device_runtime="executorch",
    )
    Options = ExecutorchOptions
    requires = ("executorch", "torchao")
    version_packages = ("executorch", "torchao", "torch")
    cli_options = (
        ("delegate", {"choices": DELEGATES,
                      "help": "the backend the .pte hands its graph to: xnnpack (CPU: Android, "
                      "Linux, iOS; default) or coreml (Apple; needs coremltools, and runs here "
                      "in edgevt's MIL interpreter)"}),
    )  # fmt: skip

    def validate(self, options: ExecutorchOptions, precisions, max_drop) -> None:
        super().validate(options, precisions, max_drop)
        if options.delegate not in (None, *DELEGATES):
            raise EdgevtError(
                f"--delegate {options.delegate} is not an ExecuTorch delegate edgevt lowers to; "
                f"choose from {', '.join(DELEGATES)}."
            )
        if options.delegate == "coreml":
            from edgevt.targets.coreml.runner import coremltools

            coremltools()  # its install hint, before any work

    def export(self, ctx: ExportContext, options: ExecutorchOptions) -> list[Artifact]:
        import torch

        _require()
        delegate = options.delegate or "xnnpack"
        name = NAMES[delegate]
        example = ctx.images[:1].contiguous()
        with ctx.stage(f"lowering {ctx.info.model} to ExecuTorch ({name})"):
            fp32 = ctx.path(self.spec, "fp32")
            details = lower(torch.export.export(ctx.model, (example,)),
                            _with_delegate(ctx.info, delegate), fp32, delegate)  # fmt: skip
        artifacts = [Artifact(fp32, "fp32", notes=[_delegation_line(details)], details=details)]
        if "int8" not in ctx.precisions:
            return artifacts
        if ctx.table is None:
            raise EdgevtError("executorch int8 needs a CalibrationTable (--calib DIR).")
        from edgevt.quant.config import QuantConfig

        config = ctx.config or QuantConfig()
        with ctx.stage("quantizing with XNNPACK's rules and the table's ranges"):
            converted, report = quantize(ctx.model, example, ctx.table, config,
                                         self._gap_images(ctx))  # fmt: skip
            folded = fold_quantized_constants(converted) if delegate == "coreml" else 0
            int8 = ctx.path(self.spec, "int8")
            details = lower(torch.export.export(converted, (example,)),
                            _with_delegate(ctx.info_for("int8"), delegate), int8,
                            delegate)  # fmt: skip
        details["quantization"] = {**report.to_dict(), "constants_in_float": folded}
        honoured = len(report.honoured)
        summary = (f"{report.quantized_ops} ops int8"
                   + (f", {len(report.float_ops)} in float" if report.float_ops else "")
                   + f", {honoured} table ranges honoured")  # fmt: skip
        quantization = Quantization(report.quantized_ops, report.float_ops, report.not_honoured,
                                    summary)  # fmt: skip
        artifact = Artifact(int8, "int8", quantization, notes=[_delegation_line(details)],
                            details=details)  # fmt: skip
        if ctx.config is not None:
            from edgevt.io import write_json

            artifact.files["config"] = write_json(ctx.run / "quant_config.json",
                                                  ctx.config.to_dict())  # fmt: skip
        return [*artifacts, artifact]

    def _gap_images(self, ctx: ExportContext) -> Iterable[torch.Tensor]:
        """The table's calibration images, for the few tensors it has no key for; read only
        when some tensor needs them."""
        from edgevt.quant.calibrate import calibration_batches

        folder = ctx.calib or ctx.table.data
        if folder is None or not Path(folder).is_dir():
            raise EdgevtError(
                "executorch int8 ranges the tensors the table has no key for (pooled outputs) "
                f"on the table's calibration images, but {folder} is not a folder; pass "
                "--calib DIR."
            )
        n = min(ctx.calib_size, GAP_CALIBRATION_IMAGES)
        yield from calibration_batches(ctx.info.preprocess, folder, n, progress=False)

    def runner(self, path: Path, threads: int | None = None) -> Runner:
        _require()
        return ExecutorchRunner(path, threads)

    def read_info(self, path: Path) -> ArtifactInfo | None:
        return read_pte_info(path)

    def bundle_files(
        self, folder: Path, models: dict[str, ArtifactInfo], input_size: int
    ) -> list[str]:
        """``load_pte.py``: how the bundle's ``run_bundle.py`` opens a ``.pte`` on the device
        (the source of ``bundle_loader`` below, standalone)."""
        import inspect

        from edgevt.io import atomic_path

        if not any(name.endswith(self.spec.suffix) for name in models):
            return []  # the device's profile lists ExecuTorch, this run made no .pte
        source = inspect.getsource(bundle_loader)
        head = ['"""ExecuTorch loader for run_bundle.py (written by `edgevt bundle`)."""',
                "", "from pathlib import Path", "from typing import Any", "", ""]  # fmt: skip
        text = "\n".join([*head, source, "", "load = bundle_loader", ""])
        with atomic_path(folder / "load_pte.py") as tmp:
            tmp.write_text(text)
        return ["load_pte.py"]

    def runs_on(self, info: ArtifactInfo, device: DeviceProfile) -> bool:
        """A program lowered to Core ML runs only on Apple's OSes."""
        return delegate_of(info) != "coreml" or device.os in ("ios", "macos")

    def report_note(self, precision: str) -> str:
        return ("ExecuTorch timings are of the batch-1 program through its Python bindings; "
                "a program lowered to Core ML is run here by edgevt's MIL interpreter, whose "
                "time says nothing of an Apple device's.")  # fmt: skip


def _with_delegate(info: ArtifactInfo, delegate: str) -> ArtifactInfo:
    import dataclasses

    return dataclasses.replace(info, extra={**info.extra, "executorch": {"delegate": delegate}})


def delegate_of(info: ArtifactInfo) -> str:
    """The delegate a program edgevt wrote was lowered to (XNNPACK before this was recorded)."""
    return info.extra.get("executorch", {}).get("delegate", "xnnpack")


def _delegation_line(details: dict[str, Any]) -> str:
    portable = details["portable_ops"]
    left = (
        (
            ", left to portable kernels: "
            + ", ".join(f"{op} x{n}" for op, n in sorted(portable.items()))
        )
        if portable
        else ""
    )
    return (
        f"{NAMES[details['delegate']]} runs {details['delegated_ops']} ops "
        f"({100 * details['delegated_share']:.0f} %){left}"
    )


def bundle_loader(path: Path, threads: int) -> tuple[str, Any]:
    """Open a ``.pte`` on a device: (backend name, batch -> logits). Standalone (no edgevt):
    ``bundle_files`` copies its source into the bundle for ``run_bundle.py``."""
    import json
    from importlib.metadata import version

    import numpy as np

    try:  # ExecuTorch's Python runtime takes torch tensors (pip install executorch)
        import torch
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime
    except ImportError:
        raise SystemExit("run_bundle: pip install executorch (needed for .pte)") from None
    portable_lib._unsafe_reset_threadpool(threads)
    program = Runtime.get().load_program(str(path))
    method = program.load_method("forward")
    info = json.loads(program.load_method("edgevt_info").execute([])[0].numpy().tobytes())
    delegate = info["extra"].get("executorch", {}).get("delegate", "xnnpack")

    def run(x: np.ndarray) -> np.ndarray:  # the program takes one image
        return np.concatenate(
            [method.execute([torch.from_numpy(x[i : i + 1])])[0].numpy() for i in range(len(x))]
        )

    name = {"xnnpack": "XNNPACK", "coreml": "Core ML"}.get(delegate, delegate)
    return f"executorch {version('executorch')} ({name})", run
