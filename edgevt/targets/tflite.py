"""TFLite / LiteRT target: .tflite files for ARM CPUs and Android, and a LiteRT runner.

* fp32: litert-torch converts the fused PyTorch model through torch.export (NCHW input kept;
  the converter inserts the layout transposes XNNPACK wants).
* fp16 / w8: ai-edge-quantizer stores weights as float16 / int8 per channel; compute stays
  float (smaller files, same kernels).
* int8: ai-edge-quantizer's full-integer recipe, with every range the edgevt
  CalibrationTable has (see ``edgevt.quant.tflite_ranges``); input and output stay float32
  unless ``int8_io`` (then the caller quantizes with the input tensor's scale/zero point).

Every file carries the edgevt ArtifactInfo in the flatbuffer's metadata (key "edgevt"), so
``edgevt eval model.tflite`` needs no flags. Heavy packages are imported inside functions.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgevt.artifact import METADATA_KEY, ArtifactInfo
from edgevt.errors import EdgevtError
from edgevt.io import atomic_path
from edgevt.op_profile import COUNT_NOISE, OPTIMIZE
from edgevt.quant.rules import TargetRules
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

PRECISIONS = ("fp32", "fp16", "w8", "int8")
INSTALL = "pip install 'edgevt[tflite]' (litert-torch, ai-edge-quantizer, ai-edge-litert)"
# images ai-edge-quantizer runs to range the tensors the table has no entry for (LayerNorm,
# Softmax, residual adds...); min/max over these.
GAP_CALIBRATION_IMAGES = 64


REQUIRES = ("litert_torch", "ai_edge_quantizer", "ai_edge_litert")


def require(module: str = "litert_torch") -> None:
    """Raise one clear error if a TFLite package is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise EdgevtError(f"the tflite target needs {module}: {INSTALL}.")


@contextlib.contextmanager
def _quiet() -> Any:
    """litert-torch and ai-edge-quantizer print progress lines of their own; keep ours."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def _with_metadata(buffer: bytes, info: ArtifactInfo) -> bytearray:
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model_t = flatbuffer_utils.convert_bytearray_to_object(bytearray(buffer))
    model_t.metadata = [m for m in (model_t.metadata or []) if m.name != METADATA_KEY.encode()]
    blob = schema.BufferT()
    blob.data = np.frombuffer(info.to_json().encode(), dtype=np.uint8)
    model_t.buffers.append(blob)
    entry = schema.MetadataT()
    entry.name = METADATA_KEY.encode()
    entry.buffer = len(model_t.buffers) - 1
    model_t.metadata.append(entry)
    return flatbuffer_utils.convert_object_to_bytearray(model_t)


def _write(path: Path, buffer: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer)
    return path


def read_tflite_info(path: str | Path) -> ArtifactInfo | None:
    """The ArtifactInfo in a .tflite's metadata (read without unpacking the weights)."""
    from ai_edge_litert import schema_py_generated as schema

    data = Path(path).read_bytes()
    try:
        model = schema.Model.GetRootAs(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() == METADATA_KEY.encode():
                buffer = model.Buffers(entry.Buffer())
                if buffer.DataLength():
                    blob = buffer.DataAsNumpy().tobytes()
                else:  # the quantizer stores large buffers after the flatbuffer
                    blob = data[buffer.Offset() : buffer.Offset() + buffer.Size()]
                return ArtifactInfo.from_json(blob, str(path))
    except EdgevtError:
        raise
    except Exception as exc:  # flatbuffers raises anything on a corrupt file
        raise EdgevtError(
            f"{path} is not a readable .tflite file (corrupt or truncated?): {exc}; re-export it."
        ) from exc
    return None


def convert_fp32(model: Any, example: Any, info: ArtifactInfo, out: str | Path) -> Path:
    """The fused eval-mode PyTorch model as a float32 .tflite (batch 1, NCHW input)."""
    require("litert_torch")
    import litert_torch
    import torch

    with torch.no_grad(), _quiet():
        try:
            edge = litert_torch.convert(model.eval(), (example[:1],))
        except Exception as exc:
            raise EdgevtError(
                f"litert-torch could not convert {info.model}: {str(exc).splitlines()[0]}. "
                "An op LiteRT cannot run is named above; export to onnx instead, or keep that "
                "module out of the model."
            ) from exc
        buffer = edge.model_content()
    info = dataclasses.replace(info, target="tflite", precision="fp32")
    return _write(Path(out), _with_metadata(bytes(buffer), info))


@dataclass
class TfliteQuantReport:
    path: Path
    precision: str
    table_keys: int = 0
    honoured: int = 0
    not_honoured: list[str] = field(default_factory=list)
    scale_problems: list[str] = field(default_factory=list)
    unmatched_ops: list[str] = field(default_factory=list)
    config_ops: int | None = None  # ops a QuantConfig put in int8 (None: full integer)
    float_ops: list[str] = field(default_factory=list)  # op types kept float (--float-ops)
    glue_ops: int = 0  # reshapes and the like between float ops, kept float with them
    widened_weights: list[str] = field(default_factory=list)  # see quant.tflite_bias

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": str(self.path),
            "precision": self.precision,
            "table_keys": self.table_keys,
            "honoured": self.honoured,
            "not_honoured": self.not_honoured,
            "scale_problems": self.scale_problems,
            "unmatched_ops": self.unmatched_ops,
            "config_ops": self.config_ops,
            "float_ops": self.float_ops,
            "glue_ops": self.glue_ops,
            "widened_weights": self.widened_weights,
        }


def quantize(
    fp32: str | Path,
    out: str | Path,
    precision: str,
    info: ArtifactInfo,
    *,
    table: Any = None,
    modules: list[str] | None = None,
    images: np.ndarray | None = None,
    int8_io: bool = False,
    config: Any = None,
    float_ops: tuple[str, ...] = (),
    calibration: dict | None = None,
) -> TfliteQuantReport:
    """Write a fp16, w8 (weight-only int8) or full-int8 .tflite from the fp32 one.

    Args:
        table: the CalibrationTable (int8 only); its ranges override the quantizer's own.
        modules: module names of the fused PyTorch model, to place table keys.
        images: preprocessed (N, 3, H, W) float32 images; the quantizer ranges the tensors
            the table has no entry for on them (the table's own calibration images are best).
        int8_io: int8 input/output tensors instead of float32.
        config: a QuantConfig: only the Conv2d / Linear / matmul ops it names run in int8
            (None = full integer, every op the quantizer supports).
        float_ops: TFLite op types (``HARD_SWISH``, ``BATCH_MATMUL``...) kept in float in the
            int8 file: on CPUs without int8 dot products some int8 kernels are slower than
            float ones (``benchmarks/tflite_op_profile.py`` measures which).
        calibration: a dict the caller keeps across calls on the same ``fp32`` and ``images``
            (the op profile's one file per op type): the float model is run on the images
            once, not once per file (most of each file's quantize time).
    """
    if precision not in PRECISIONS[1:]:
        raise EdgevtError(f"tflite precision {precision!r}: choose from {', '.join(PRECISIONS)}.")
    require("ai_edge_quantizer")
    from ai_edge_quantizer import quantizer, recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    fp32 = Path(fp32)
    float_ops = _known_float_ops(float_ops, precision)
    report = TfliteQuantReport(Path(out), precision)
    info = dataclasses.replace(  # a copy: the caller's info stays as it was
        info,
        target="tflite",
        precision=precision,
        extra={**info.extra, "int8_io": bool(int8_io and precision == "int8")},
    )
    # The metadata goes in before quantizing: the quantizer carries it over, and re-packing
    # its output (large buffers stored after the flatbuffer) is its job, not ours.
    source = bytes(_with_metadata(fp32.read_bytes(), info))
    plan = mapping = None
    if precision == "fp16":
        qt = quantizer.Quantizer(source)
        qt.add_weight_only_config(".*", "*", 16, algorithm_key=AlgorithmName.FLOAT_CASTING)
        qsvs = None
    elif precision == "w8":
        qt = quantizer.Quantizer(source, recipe.weight_only_wi8_afp32())
        qsvs = None
    else:
        qt, plan, mapping = _full_integer(
            fp32, source, table, images, modules or [], int8_io, config, float_ops, report,
            {} if calibration is None else calibration,
        )
        qsvs = plan.qsvs
    with _quiet():
        result = qt.quantize(qsvs, enable_progress_report=False)
    buffer = bytes(result.quantized_model)
    if precision == "int8":
        from ai_edge_litert.tools import flatbuffer_utils

        from edgevt.quant import tflite_ranges
        from edgevt.quant.tflite_bias import fit_int32_biases

        quantized_t = fu.read_model(buffer)
        report.widened_weights = fit_int32_biases(quantized_t, fu.read_model(fp32))
        if report.widened_weights:
            buffer = bytes(flatbuffer_utils.convert_object_to_bytearray(quantized_t))
        report.scale_problems = tflite_ranges.check_scales(
            quantized_t, plan.honoured, mapping.range_of_key
        )
    _write(Path(out), buffer)
    return report


def _known_float_ops(float_ops: tuple[str, ...], precision: str) -> tuple[str, ...]:
    from ai_edge_quantizer import qtyping

    float_ops = tuple(op.upper() for op in float_ops)
    if float_ops and precision != "int8":
        raise EdgevtError("--float-ops applies to tflite int8 only.")
    known = {e.value for e in qtyping.TFLOperationName} - {"*", "INPUT", "OUTPUT"}
    unknown = [op for op in float_ops if op not in known]
    if unknown:
        raise EdgevtError(
            f"--float-ops: unknown TFLite op type(s) {', '.join(unknown)}; known: "
            f"{', '.join(sorted(known))}."
        )
    return float_ops


def _full_integer(
    fp32: Path,
    source: bytes,
    table: Any,
    images: np.ndarray | None,
    modules: list[str],
    int8_io: bool,
    config: Any,
    float_ops: tuple[str, ...],
    report: TfliteQuantReport,
    calibration: dict,
) -> tuple[Any, Any, Any]:
    """The quantizer set up for int8, calibrated, with the table's ranges put in place of its
    own: (quantizer, the ranges plan, the key -> tensor mapping)."""
    from ai_edge_quantizer import qtyping, quantizer, recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    from edgevt.quant import tflite_ranges

    if table is None or images is None or len(images) == 0:
        raise EdgevtError("tflite int8 needs a CalibrationTable and calibration images.")
    model_t = fu.read_model(fp32)
    if config is None:  # full integer: every op the quantizer supports
        qt = quantizer.Quantizer(source, recipe.static_wi8_ai8())
    else:  # only the compute ops the config names; the rest stays float between Q/DQ
        qt = quantizer.Quantizer(source)
        chosen = tflite_ranges.choose_ops(model_t, config, modules, table.ops)
        if not chosen:
            raise EdgevtError("the quantization config keeps every op in float.")
        for op in chosen:
            granularity = "CHANNELWISE" if op.per_channel else "TENSORWISE"
            qt.add_static_config(
                "^" + re.escape(op.scope) + "$", op.op_type, 8, 8,
                weight_granularity=getattr(qtyping.QuantGranularity, granularity),
            )  # fmt: skip
        report.config_ops = len(chosen)
    if not int8_io:  # keep the graph's input/output float32: the quantizer adds Q/DQ ops
        for io_op in ("INPUT", "OUTPUT"):
            qt.update_quantization_recipe(".*", io_op, algorithm_key=AlgorithmName.NO_QUANTIZE)
    for op_type in float_ops:
        qt.update_quantization_recipe(".*", op_type, algorithm_key=AlgorithmName.NO_QUANTIZE)
    graph = model_t.subgraphs[0]
    scopes = [fu.get_op_scope(op, graph.tensors) for op in graph.operators]
    shared = {s for s, n in collections.Counter(scopes).items() if n > 1}
    glue = [  # named by its scope (its output tensors' names): only where that names one op
        op for op in (tflite_ranges.ops_between_float_ops(model_t, float_ops) if float_ops else [])
        if scopes[op.index] not in shared
    ]  # fmt: skip
    for op in glue:
        qt.update_quantization_recipe(
            "^" + re.escape(scopes[op.index]) + "$", op.op_type,
            algorithm_key=AlgorithmName.NO_QUANTIZE,
        )  # fmt: skip
    report.glue_ops = len(glue)
    calibrated = _calibrated(fp32, source, images, calibration)
    mapping = tflite_ranges.map_table(model_t, table, modules)
    if config is not None:  # only the chosen ops' tensors are quantized at all (not the ADD
        names = {op.name for op in chosen}  # of a bias the converter split off, either)
        direct = {t for op in tflite_ranges.read_ops(model_t) for t in op.outputs
                  if op.op_type in tflite_ranges.CONFIG_OP_TYPE}  # fmt: skip
        mapping.tensor_of_key = {
            k: t for k, t in mapping.tensor_of_key.items()
            if k.split(":")[0] in names and (not k.endswith(":out") or t in direct)
        }  # fmt: skip
    if float_ops:  # a tensor that only float ops touch stays float: nothing to honour
        glued = {op.index for op in glue}
        kept = tflite_ranges.tensors_of_ops(model_t, [
            op for op in tflite_ranges.read_ops(model_t)
            if op.op_type not in float_ops and op.index not in glued
        ])  # fmt: skip
        mapping.tensor_of_key = {k: t for k, t in mapping.tensor_of_key.items() if t in kept}
        report.float_ops = list(float_ops)
    plan = tflite_ranges.apply_table(model_t, calibrated, mapping)
    report.table_keys = len(table.activations)
    report.honoured = len(plan.honoured)
    report.not_honoured = plan.not_honoured
    report.unmatched_ops = mapping.unmatched_ops
    return qt, plan, mapping


def _calibrated(
    fp32: Path, source: bytes, images: np.ndarray, memo: dict
) -> dict[str, dict[str, Any]]:
    """Every tensor's min/max over ``images``, run in the float model: a quantizer of the
    full-int8 recipe collects them all, so one pass serves any float set or config (an op
    kept float only leaves its tensors unused). Kept in ``memo`` for the next file."""
    from ai_edge_quantizer import quantizer, recipe

    key = (str(fp32), id(images), len(images))
    if key not in memo:
        signature = _signature(fp32)
        with _quiet():
            memo[key] = quantizer.Quantizer(source, recipe.static_wi8_ai8()).calibrate(
                {signature[0]: [{signature[1]: x[None]} for x in images]},
                num_threads=os.cpu_count(),
            )  # fmt: skip
    return memo[key]


def _signature(path: Path) -> tuple[str, str]:
    """(signature key, input name) of a converted model: ('serving_default', 'args_0')."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    signatures = interp.get_signature_list()
    key = next(iter(signatures))
    return key, signatures[key]["inputs"][0]


class LiteRTRunner(Runner):
    """LiteRT (ai-edge-litert) with XNNPACK on the CPU; ``threads`` None = LiteRT's default."""

    def __init__(
        self, path: str | Path, threads: int | None = None, info: ArtifactInfo | None = None
    ) -> None:
        super().__init__()
        require("ai_edge_litert")
        self.path = Path(path)
        self.threads = threads
        self.info = require_info(info or read_tflite_info(self.path), self.path)
        self.interpreter = None

    def _activate(self) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(self.path), num_threads=self.threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        interp, inp, out = self.interpreter, self.input, self.output
        rows = []
        for image in batch:  # converted with batch 1
            x = image[None]
            if inp["dtype"] != np.float32:
                scale, zero = inp["quantization"]
                info = np.iinfo(inp["dtype"])
                x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(inp["dtype"])
            interp.set_tensor(inp["index"], x)
            interp.invoke()
            y = interp.get_tensor(out["index"])
            if out["dtype"] != np.float32:
                scale, zero = out["quantization"]
                y = (y.astype(np.float32) - zero) * scale
            rows.append(np.array(y, dtype=np.float32).reshape(1, -1))
        return np.concatenate(rows)

    def _deactivate(self) -> None:
        self.interpreter = None

    def describe(self) -> dict[str, Any]:
        import ai_edge_litert

        return {
            "backend": "litert",
            "litert": getattr(ai_edge_litert, "__version__", "unknown"),
            "artifact": str(self.path),
            "size_bytes": os.path.getsize(self.path),
            "model": self.info.model,
            "precision": self.info.precision,
            "threads": self.threads or "default",
            "delegate": "xnnpack",
        }


# What LiteRT's full-integer int8 does, in the terms the simulations use: asymmetric int8
# activations (256 levels over [lo, hi], like uint8), full 8-bit per-channel weights, and the
# calibrated element-wise ops in int8 too, as every tensor of a full-integer .tflite is.
LITERT_RULES = TargetRules(
    name="tflite",
    signed_activations=False,
    quantize_bias=True,
    calibrated_elementwise=("Add", "Clip", "Relu"),
)


@dataclass(frozen=True)
class TfliteOptions(TargetOptions):
    int8_io: bool = False
    float_ops: tuple[str, ...] = ()
    optimize: str | None = None
    profile_on: str | None = None  # an ARM device: --optimize counts its core's instructions


@register_target
class TfliteTarget(Target):
    spec = TargetSpec(
        name="tflite",
        description="TFLite/LiteRT (ARM CPUs, Android) via litert-torch; int8 from the "
        "CalibrationTable",
        suffixes=(".tflite",),
        precisions=PRECISIONS,
        extra="tflite",
        device_runtime="ai-edge-litert (or tflite-runtime)",
    )
    Options = TfliteOptions
    requires = REQUIRES
    supports_debug = True
    supports_max_drop = True  # the float ops chosen in QuantSim with LiteRT's rules
    version_packages = ("litert-torch", "ai-edge-quantizer", "ai-edge-litert")
    cli_options = (
        ("int8_io", {"action": "store_true",
                     "help": "int8 input/output tensors (default: float32 in and out)"}),
        ("float_ops", {"nargs": "+", "metavar": "OP",
                       "help": "TFLite op types to keep in float in the int8 file, e.g. "
                       "HARD_SWISH BATCH_MATMUL, chosen by hand (by default --optimize "
                       "chooses them from what `edgevt profile` measures)"}),
        ("optimize", {"choices": OPTIMIZE,
                      "help": "how the int8 file's float op types are chosen, from what each op "
                      "type costs in int8 on this host (measured, op_profile_tflite.json): "
                      "latency (fastest), balanced (also cheap accuracy wins; default), "
                      "accuracy (most accurate not slower than fp32), full (every op int8, "
                      "for NPUs; no profile). --float-ops and --quant-config choose by hand"}),
        ("profile_on", {"metavar": "DEVICE|RESULTS.json",
                        "help": "choose --optimize's recipe for a device instead of this host: "
                        "RESULTS.json, the device's own timings of the op profile (`edgevt "
                        "bundle RUN --device D --op-profile`, then `run_bundle.py --op-profile` "
                        "there); or an ARM DEVICE, what each op type costs in aarch64 "
                        "instructions on its core under qemu (raspberry-pi-5: cortex-a76, "
                        "raspberry-pi-4: cortex-a72; 1 thread, a count, not a time; needs "
                        "qemu-user and gcc)"}),
    )  # fmt: skip

    def quantization_rules(self) -> TargetRules:
        return LITERT_RULES

    def debug_probe(self, path: Path, table, modules, details, threads: int | None = None):
        require("ai_edge_litert")
        from edgevt.targets.tflite_debug import TfliteProbe

        return TfliteProbe(path, table, modules, threads)

    def int8_variant(self, run: Path, out: Path, table, config, info: ArtifactInfo) -> Path:
        """A ``config`` file (only the ops it names in int8), ranged like the export does."""
        fp32, modules, images = _requantize_inputs(run, table, info)
        quantize(fp32, out, "int8", info, table=table, modules=modules, images=images,
                 config=config)  # fmt: skip
        return out

    def op_profile(
        self, run: Path, threads: list[int] | None = None, progress: bool = True,
        core: str | None = None,
    ):
        """The run's int8 op-type profile, measured again (the export's own choice of float
        ops is in its manifest); the files it quantizes live in a temporary folder."""
        import shutil
        import tempfile

        from edgevt.progress import step
        from edgevt.targets import tflite_profile

        work = Path(tempfile.mkdtemp(prefix=".op-profile-", dir=run))
        try:
            how = "timing" if core is None else f"counting instructions on emulated {core} of"
            with step(f"quantizing and {how} one file per op type", progress):
                found, info, images = self.profile_candidates(run, work)
                return tflite_profile.measure_candidates(found, info, images, threads, core)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def profile_candidates(self, run: Path, work: Path):
        """The op-type profile's files of ``run`` (full int8, one per op type, the group),
        quantized into ``work`` from the run's table: (Candidates, the fp32 file's
        ArtifactInfo, the images the quantizer ranges gaps on)."""
        from edgevt.quant.table import CalibrationTable
        from edgevt.targets import tflite_profile

        require("ai_edge_quantizer")
        require("ai_edge_litert")
        if not (run / "calibration.json").is_file():
            raise EdgevtError(f"{run} has no calibration.json: export it with --int8 first.")
        table = CalibrationTable.load(run / "calibration.json")
        info = read_tflite_info(run / "model.tflite") if (run / "model.tflite").is_file() else None
        if info is None:
            raise EdgevtError(f"{run} has no model.tflite written by edgevt; export the run "
                              "again with --target tflite.")  # fmt: skip
        fp32, modules, images = _requantize_inputs(run, table, info)
        calibration: dict = {}  # one float pass over the images for every file

        def write(out: Path, float_ops: tuple[str, ...]) -> Any:
            return quantize(fp32, out, "int8", info, table=table, modules=modules, images=images,
                            float_ops=float_ops, calibration=calibration)  # fmt: skip

        write(work / "int8_full.tflite", ())
        found = tflite_profile.candidates(fp32, work / "int8_full.tflite", write, work)
        return found, info, images

    def simulation(self, model, fp32_onnx, table, config, artifact: Path | None = None):
        """The QDQ simulation of LiteRT's rules, with what a full-integer .tflite adds: one
        scale through reshape-like ops, fixed Softmax scales, every int8 op's output stored
        int8 (read from the run's fp32 .tflite, or ``artifact``'s own graph)."""
        if artifact is None:
            return super().simulation(model, fp32_onnx, table, config)
        require("ai_edge_quantizer")
        from edgevt.targets.tflite_debug import litert_simulation

        fp32 = artifact.parent / "model.tflite"
        graph = fp32 if fp32.is_file() else artifact
        return litert_simulation(model, fp32_onnx, table, config, LITERT_RULES, graph)

    def validate(self, options: TfliteOptions, precisions, max_drop) -> None:
        super().validate(options, precisions, max_drop)
        for flag, value in (("--float-ops", options.float_ops), ("--int8-io", options.int8_io)):
            if value and "int8" not in precisions:
                raise EdgevtError(f"{flag} applies to --precision int8 only (the full-int8 file).")
        if options.float_ops and self.available() is None:  # unknown ops fail before any work
            _known_float_ops(options.float_ops, "int8")
        if options.optimize is not None:
            if "int8" not in precisions:
                raise EdgevtError("--optimize chooses the int8 file's float ops; add --int8.")
            if options.optimize not in OPTIMIZE:
                raise EdgevtError(f"--optimize {options.optimize}: choose from "
                                  f"{', '.join(OPTIMIZE)}.")  # fmt: skip
            if max_drop is not None and options.optimize != "full":
                raise EdgevtError(
                    f"--optimize {options.optimize} chooses the float ops for speed; --max-drop "
                    "chooses them for accuracy. Drop one (or use --optimize full)."
                )
            if options.float_ops and options.optimize != "full":
                raise EdgevtError(
                    f"--optimize {options.optimize} chooses the float ops itself; drop it, or "
                    "drop --float-ops."
                )  # fmt: skip
        if options.profile_on is not None:
            if "int8" not in precisions:
                raise EdgevtError("--profile-on chooses the int8 file's float ops; add --int8.")
            if options.optimize == "full" or options.float_ops or max_drop is not None:
                raise EdgevtError(
                    "--profile-on measures the op types --optimize chooses from; --optimize "
                    "full, --float-ops and --max-drop choose otherwise. Drop one."
                )
            from edgevt.targets import tflite_profile

            if tflite_profile.is_device_results(options.profile_on):  # read it before any work
                tflite_profile.from_device_results(Path(options.profile_on))
            else:
                from edgevt.aarch64 import core_for_device

                core_for_device(options.profile_on)  # an ARM profile with a core, qemu here

    def export(self, ctx: ExportContext, options: TfliteOptions) -> list[Artifact]:
        """fp32 through litert-torch, then fp16 / w8 / int8 from it with ai-edge-quantizer.
        int8 is full-integer unless the quant config (or ``--max-drop``'s choice, simulated
        with LiteRT's rules) names ops to keep in float."""
        if ctx.config is not None and options.optimize not in (None, "full"):
            raise EdgevtError(f"--optimize {options.optimize} chooses the float ops itself; "
                              "drop it, or drop --quant-config.")  # fmt: skip
        if ctx.config is not None and options.profile_on and ctx.max_drop is None:
            raise EdgevtError("--profile-on measures the op types --optimize chooses from; "
                              "--quant-config chooses by hand. Drop one.")  # fmt: skip
        budget: dict[str, Any] = {}
        if ctx.max_drop is not None and "int8" in ctx.precisions:
            from edgevt.quant.sensitivity import budget_config

            config, budget = budget_config(ctx, LITERT_RULES)
            ctx = dataclasses.replace(ctx, config=config)
        fp32 = ctx.path(self.spec, "fp32")
        with ctx.stage(f"converting {ctx.info.model} to TFLite (litert-torch)"):
            convert_fp32(ctx.model, ctx.images[:1], ctx.info, fp32)
        artifacts = [Artifact(fp32, "fp32")]
        gap_images = self._gap_images(ctx) if "int8" in ctx.precisions else None
        modules = [name for name, _ in ctx.model.named_modules()]
        calibration: dict = {}  # the int8 file, the profile's files, the recipe: one pass
        for precision in ctx.precisions[1:]:
            path = ctx.path(self.spec, precision)
            int8 = precision == "int8"

            def write(out: Path, float_ops: tuple[str, ...], precision=precision, int8=int8):
                return quantize(
                    fp32, out, precision, ctx.info, table=ctx.table if int8 else None,
                    modules=modules, images=gap_images if int8 else None,
                    int8_io=options.int8_io, config=ctx.config, float_ops=float_ops,
                    calibration=calibration,
                )  # fmt: skip

            with ctx.stage(f"quantizing to {precision} (ai-edge-quantizer)"):
                report = write(path, options.float_ops if int8 else ())
            notes, details = list(report.widened_weights), {}
            if int8:
                report, notes, details = self._latency_aware(ctx, options, fp32, path, write,
                                                             gap_images, report)  # fmt: skip
            quantization = _quantization(report) if int8 else None
            if int8 and budget:
                from edgevt.quant.sensitivity import budget_summary

                quantization.summary += budget_summary(budget)
                details["sensitivity"] = budget
            artifacts.append(Artifact(path, precision, quantization, notes=notes,
                                      details={**report.to_dict(), **details}))  # fmt: skip
        if ctx.config is not None:
            from edgevt.io import write_json

            config = write_json(ctx.run / "quant_config.json", ctx.config.to_dict())
            artifacts[-1].files["config"] = config
        if budget:
            int8_file = next(a for a in artifacts if a.precision == "int8")
            int8_file.files["sensitivity"] = ctx.run / "sensitivity.json"
        return artifacts

    def _latency_aware(
        self, ctx: ExportContext, options: TfliteOptions, fp32: Path, path: Path,
        write: Any, images: np.ndarray, report: TfliteQuantReport,
    ) -> tuple[TfliteQuantReport, list[str], dict[str, Any]]:  # fmt: skip
        """Choose the int8 file's float op types from a measured profile (``--optimize``),
        then time it against fp32: notes and details saying what was chosen and how fast."""
        from edgevt.op_profile import choose, default_threads, slower_than_fp32, speed_line
        from edgevt.targets import tflite_profile

        forced = bool(options.float_ops) or ctx.config is not None
        mode = options.optimize or ("full" if forced else "balanced")
        threads = default_threads()
        notes, details = list(report.widened_weights), {"optimize": mode}
        try:  # a file LiteRT cannot run is refused by the export's check, with its reason
            with LiteRTRunner(path, info=ctx.info) as runner:
                runner.infer(images[:1])
        except Exception:  # noqa: BLE001  (whatever the runtime raised: the check says it)
            return report, notes, details
        timed, core, device = None, None, None
        if options.profile_on and mode != "full":
            if tflite_profile.is_device_results(options.profile_on):
                device_profile, device = tflite_profile.from_device_results(
                    Path(options.profile_on))
                if device_profile.model != ctx.info.model:
                    raise EdgevtError(
                        f"--profile-on {options.profile_on} profiles {device_profile.model}, "
                        f"not {ctx.info.model}: bundle this model's run with --op-profile.")
            else:
                from edgevt.aarch64 import core_for_device

                core = core_for_device(options.profile_on)
        if mode != "full":
            where = "here"
            if device is not None:
                where = f"on {device} (its own timings)"
            elif core is not None:
                where = f"on emulated {core} (instructions)"
            if device is not None:
                profile = device_profile
                name = f"op_profile_tflite_{device}.json"
            else:
                with ctx.stage(f"profiling what each op type costs in int8 {where} (a file "
                               "per type)"):  # fmt: skip
                    profile = tflite_profile.profile(fp32, path, ctx.info, write, images,
                                                     threads, core=core)  # fmt: skip
                name = ("op_profile_tflite.json" if core is None
                        else f"op_profile_tflite_{options.profile_on}_{core}.json")  # fmt: skip
            details["op_profile"] = profile.save(ctx.run / name).name
            chosen = choose(profile, mode)
            details["float_types"] = chosen
            if chosen:
                with ctx.stage(f"quantizing the {mode} recipe: {' '.join(chosen)} in float"):
                    report = write(path, tuple(chosen))
                notes = list(report.widened_weights)
            elif core is None and device is None:
                timed = profile.fp32.ms, profile.full.ms
            notes.append(f"--optimize {mode}: " + (f"{' '.join(chosen)} kept in float"
                         if chosen else f"no op type costs more in int8 {where}"))  # fmt: skip
            if device is not None:
                notes += self._on_device(device, profile, chosen)
            if core is not None:
                counts = self._counted_on(core, fp32, path, chosen, profile, images)
                details["instructions"] = counts
                notes.append(
                    f"on emulated {core}, 1 thread: int8 {counts['int8'] / 1e6:.4g} M vs fp32 "
                    f"{counts['fp32'] / 1e6:.4g} M instructions per inference "
                    f"({counts['fp32'] / counts['int8']:.2f}x fewer; a count, not a time)"
                )  # fmt: skip
                if counts["int8"] > counts["fp32"] * (1 + COUNT_NOISE):
                    notes.append(f"WARNING: this int8 file executes more instructions than fp32 "
                                 f"on {core}; model.tflite is the cheaper file there.")  # fmt: skip
        if timed is None:
            with ctx.stage("timing the int8 file against fp32"):
                fp32_ms, int8_ms, _ = tflite_profile.time_pair(fp32, path, ctx.info, images,
                                                               threads)  # fmt: skip
            timed = fp32_ms, int8_ms
        fp32_ms, int8_ms = timed
        details["latency"] = {"fp32_ms": fp32_ms, "int8_ms": int8_ms, "batch": 1}
        notes.append(speed_line("int8 latency here", int8_ms, fp32_ms))
        slow = slower_than_fp32(int8_ms, fp32_ms)
        if slow:
            how = ("drop --float-ops / --quant-config and let --optimize choose" if forced
                   else "--optimize balanced keeps the op types that are slow in int8 in float"
                   if mode == "full" else "model.tflite is the faster file here")  # fmt: skip
            notes.append(f"WARNING: this int8 file is slower than fp32 at {slow} thread(s) on "
                         f"this host; {how}.")  # fmt: skip
        return report, notes, details

    @staticmethod
    def _on_device(device: str, profile, chosen: list[str]) -> list[str]:
        """What the device's own timings say of the chosen file: measured where the profile
        timed that very file, else the sum of the measured per-type costs."""
        from edgevt.op_profile import slower_than_fp32, speed_line

        same = profile.measured(chosen)
        if same is not None:  # every thread count the device timed
            ms, how = same.ms, "timed there"
        else:
            ms = {profile.base: profile.predicted(chosen)}
            how = "predicted from its per-type timings"
        fp32 = {t: profile.fp32.ms[t] for t in ms}
        notes = [speed_line(f"int8 latency on {device} ({how})", ms, fp32)]
        slow = slower_than_fp32(ms, fp32)
        if slow:
            notes.append(f"WARNING: on {device} this int8 file is slower than fp32 at {slow} "
                         "thread(s); model.tflite is the faster file there.")  # fmt: skip
        return notes

    @staticmethod
    def _counted_on(
        core: str, fp32: Path, path: Path, chosen: list[str], profile, images: np.ndarray
    ) -> dict[str, int]:
        """fp32's and the chosen int8 file's instructions per inference on ``core`` (the
        profile's own counts where the chosen file is one it counted)."""
        fp32_count = round(profile.fp32.ms[1] * 1e6)
        if not chosen:
            return {"fp32": fp32_count, "int8": round(profile.full.ms[1] * 1e6)}
        from edgevt.aarch64 import count_files

        return {"fp32": fp32_count, "int8": count_files({"int8": path}, core, images[:1])["int8"]}

    def _gap_images(self, ctx: ExportContext) -> np.ndarray:
        """Images to range what the table has no entry for (LayerNorm, Softmax outputs): the
        table's own calibration images."""
        import torch

        from edgevt.quant.calibrate import calibration_batches

        folder = ctx.calib or ctx.table.data
        if folder is None or not Path(folder).is_dir():
            raise EdgevtError(
                "tflite int8 ranges the tensors the table has no entry for (LayerNorm, Softmax "
                f"outputs) on the table's calibration images, but {folder} is not a folder; "
                "pass --calib DIR."
            )
        n = min(ctx.calib_size, GAP_CALIBRATION_IMAGES)
        batches = calibration_batches(ctx.info.preprocess, folder, n, progress=False)
        return torch.cat(list(batches)).numpy()

    def runner(self, path: Path, threads: int | None = None) -> Runner:
        return LiteRTRunner(path, threads=threads)

    def read_info(self, path: Path) -> ArtifactInfo | None:
        require("ai_edge_litert")
        return read_tflite_info(path)


def _requantize_inputs(run: Path, table: Any, info: ArtifactInfo) -> tuple[Path, list, Any]:
    """What re-quantizing a run's fp32 .tflite needs, as its export had it: the file, the
    fused model's module names, the table's calibration images for the unkeyed tensors."""
    import torch

    from edgevt.fused import load_fused
    from edgevt.quant.calibrate import calibration_batches

    fp32 = run / "model.tflite"
    if not fp32.is_file():
        raise EdgevtError(f"{run} has no model.tflite to quantize; export the run again.")
    if table.data is None or not Path(table.data).is_dir():
        raise EdgevtError(f"the table's calibration images ({table.data}) are not here; "
                          "rerun calibration with --calib DIR.")  # fmt: skip
    batches = calibration_batches(info.preprocess, table.data, GAP_CALIBRATION_IMAGES,
                                  progress=False)  # fmt: skip
    modules = [n for n, _ in load_fused(run / "fused.pt")[0].named_modules()]
    return fp32, modules, torch.cat(list(batches)).numpy()


def _quantization(report: TfliteQuantReport) -> Quantization:
    q = report.to_dict()
    scope = "full int8" if q["config_ops"] is None else f"{q['config_ops']} ops int8"
    if q["float_ops"]:
        scope += f" but {' '.join(q['float_ops'])} in float"
    return Quantization(
        q["honoured"], q["float_ops"], q["not_honoured"] + q["scale_problems"],
        f"{scope}, {q['honoured']} table ranges honoured",
    )  # fmt: skip
