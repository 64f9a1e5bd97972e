"""The ``tensorrt`` target: explicit-quantization QDQ ONNX, its rule check, the trtexec script,
the legacy calibration cache, and the engine where TensorRT runs.

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

from edgevt.artifact import ArtifactInfo
from edgevt.errors import EdgevtError
from edgevt.io import atomic_path
from edgevt.quant.rules import TargetRules
from edgevt.targets import register_target
from edgevt.targets.base import Artifact, ExportContext, TargetSpec
from edgevt.targets.onnx import INPUT_NAME as INPUT
from edgevt.targets.onnx import OnnxTarget

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


def engine_name(onnx_name: str, int8: bool) -> str:
    """The engine trtexec.sh (and run_bundle.py) builds from ``onnx_name``."""
    stem = Path(onnx_name).stem
    return f"{stem}.engine" if int8 else f"{stem}_fp16.engine"


def trtexec_script(
    models: list[tuple[str, bool]],
    size: int,
    *,
    folder: str = "",
    results: str = "",
    max_batch: int = 1,
    cache: str | None = None,
    written_by: str = "edgevt",
) -> str:
    """The one trtexec script edgevt writes (export kit and Jetson bundle alike): per ONNX
    model ``(file name, is_int8)``, build its engine on the device and time it. QDQ models
    carry their own int8 scales (explicit quantization); fp32 models build in fp16."""
    q = shlex.quote
    shapes = f"--shapes={INPUT}:1x3x{size}x{size}"
    if max_batch > 1:  # a dynamic-batch engine: its build profile
        shapes += (
            f" --minShapes={INPUT}:1x3x{size}x{size} --optShapes={INPUT}:1x3x{size}x{size} "
            f"--maxShapes={INPUT}:{max_batch}x3x{size}x{size}"
        )
    lines = [
        "#!/usr/bin/env bash",
        "# Build and time a TensorRT engine from each ONNX model, on the Jetson itself (engines",
        "# are specific to the GPU and TensorRT version that built them; trtexec ships with",
        f"# JetPack: /usr/src/tensorrt/bin/trtexec). Written by {written_by}.",
        "set -euo pipefail",
        'TRTEXEC="${TRTEXEC:-/usr/src/tensorrt/bin/trtexec}"',
        'cd "$(dirname "$0")"',
    ]
    if results:
        lines.append(f"mkdir -p {q(results)}")
    for name, int8 in models:
        stem, engine = Path(name).stem, engine_name(name, int8)
        flags = "--int8 --fp16" if int8 else "--fp16"
        lines.append(
            f'"$TRTEXEC" --onnx={q(folder + name)} {flags} {shapes} '
            f"--saveEngine={q(folder + engine)} --exportTimes={q(f'{results}{stem}-times.json')}"
        )
    if cache:
        fp32 = next((n for n, int8 in models if not int8), "model.onnx")
        lines += [
            "",
            "# older JetPack (TensorRT <= 8.5): implicit int8 from the legacy calibration cache;",
            "# its first line names the TensorRT version (8.5.2 = JetPack 5.1): edit to match.",
            f'# "$TRTEXEC" --onnx={q(folder + fp32)} --int8 --fp16 --calib={q(cache)} {shapes} '
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
    onnx_path: str | Path, engine_path: str | Path, int8: bool = True, max_batch: int = 8
) -> Path:
    """Build a serialized engine with TensorRT's Python API: the bundle runner's builder, so
    the export and the Jetson build alike. Not run in CI: TensorRT cannot be installed there."""
    from edgevt.bundle_runner import build_engine as build

    return build(Path(onnx_path), Path(engine_path), int8, max_batch=max_batch,
                 workspace_gib=2.0)  # fmt: skip


# TensorRT: int8 symmetric everywhere (zero point 0), per-output-channel weights, Q/DQ on the
# inputs of quantized ops only (TensorRT propagates and fuses them), float biases.
TENSORRT_RULES = TargetRules(name="tensorrt", signed_activations=True)


@register_target
class TensorrtTarget(OnnxTarget):
    spec = TargetSpec(
        name="tensorrt",
        description="TensorRT (Jetson): QDQ ONNX + trtexec script + calib cache; engine where "
        "TRT runs",
        suffixes=(".onnx",),
        precisions=("fp32", "int8"),
        extra="tensorrt",
        needs_gpu=True,
        device_runtime="TensorRT (trtexec)",
    )
    ort_optimization = "none"  # the exact QDQ graph stands in for TensorRT's int8 numerics
    cli_options = ()  # --opset comes with the onnx target's group

    def quantization_rules(self) -> TargetRules:
        return TENSORRT_RULES

    def available(self) -> str | None:
        return None  # writes the QDQ graph and kit anywhere; the engine is built on the device

    def precision_hint(self, unknown: list[str]) -> str:
        return (
            " TensorRT's fp16 engine is built on the device from model.onnx (see the trtexec "
            "script of an int8 export)."
        )

    def export_int8(self, ctx: ExportContext, fp32: Path) -> tuple[Artifact, Any]:
        """The ONNX target's QDQ model under TensorRT's rules, plus what the Jetson needs."""
        int8, plan = super().export_int8(ctx, fp32)
        self._kit(int8, fp32, plan, ctx.info.preprocess.input_size)
        return int8, plan

    def _kit(self, int8: Artifact, fp32: Path, plan: Any, size: int) -> None:
        """Check TensorRT's Q/DQ rules, write the legacy cache and trtexec script, build the
        engine where TensorRT runs."""
        import onnx

        problems = check_tensorrt_qdq(onnx.load(str(int8.path)))
        if problems:
            raise EdgevtError(
                f"{int8.path} breaks {len(problems)} TensorRT Q/DQ rule(s), first: {problems[0]}"
            )
        # plan.ranges is keyed by the fp32 graph's tensor names: what implicit int8 calibrates
        cache = write_calibration_cache(plan.ranges, int8.path.with_name("calib.cache"))
        script = int8.path.with_name("trtexec.sh")
        text = trtexec_script(
            [(int8.path.name, True), (fp32.name, False)], size, max_batch=8, cache=cache.name,
            written_by="`edgevt export --target tensorrt`",
        )  # fmt: skip
        with atomic_path(script) as tmp:
            tmp.write_text(text)
        script.chmod(0o755)
        int8.files.update({"calib_cache": cache, "trtexec": script})
        int8.details["tensorrt_rules"] = "ok"
        int8.notes.append(
            f"tensorrt: Q/DQ rules ok; {script} builds the engines, {cache} serves TensorRT <= 8.5"
        )
        why_not = tensorrt_available()
        if why_not is None:
            engine = build_engine(int8.path, int8.path.with_suffix(".engine"))
            int8.files["engine"] = engine
            int8.notes.append(f"  {engine}")
        else:
            int8.notes.append(
                f"  engine to be built on the device ({why_not}): run trtexec.sh there; "
                "ONNX Runtime ran the same QDQ graph as the stand-in for TensorRT's int8 numerics"
            )

    def device_builds(self, models: dict[str, ArtifactInfo]) -> dict[str, dict[str, str]]:
        """An engine per bundled ONNX file, named as trtexec.sh names it: int8 from a QDQ graph
        (explicit quantization), fp16 from an fp32 one."""
        return {
            engine_name(name, info.precision == "int8"): {
                "from": name, "precision": "int8" if info.precision == "int8" else "fp16",
                "target": self.spec.name,
                "build": "./trtexec.sh, or run_bundle.py with TensorRT's Python API",
            }
            for name, info in models.items() if name.endswith(".onnx")
        }  # fmt: skip

    def bundle_files(self, folder: Path, models: dict[str, ArtifactInfo], size: int) -> list[str]:
        onnx_models = [(n, i.precision == "int8") for n, i in models.items() if n.endswith(".onnx")]
        text = trtexec_script(onnx_models, size, folder="models/", results="results/",
                              written_by="`edgevt bundle`")  # fmt: skip
        with atomic_path(folder / "trtexec.sh") as tmp:
            tmp.write_text(text)
            tmp.chmod(0o755)
        return ["trtexec.sh"]

    def report_note(self, precision: str) -> str:
        if precision != "int8":
            return ""
        return (
            "TensorRT-target int8 models are timed on the host in ONNX Runtime with graph "
            "optimisation off (the exact-numerics stand-in used for their accuracy): that latency "
            "says nothing about a Jetson; time them there with the bundle's trtexec.sh."
        )

    def bundle_readme(self) -> str:
        return """
Engines are built on the Jetson. With TensorRT's Python API the runner can time an `.engine`;
the simplest route is `trtexec`, which builds and times each model in one go:

```bash
./trtexec.sh            # builds models/*.engine, times them: results/*-times.json
python3 run_bundle.py   # checks, scores and times every engine beside its ONNX file
```

`run_bundle.py` holds each engine to its ONNX file's logits on this host and scores it on the
bundled labelled images. Without trtexec it builds a missing engine itself with TensorRT's
Python API (minutes per engine on a Jetson); `--models model_int8.engine` runs one.
"""
