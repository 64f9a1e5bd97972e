"""edgevt's benchmark suite: every artifact edgevt makes, and what the obvious alternatives give,
on the same models and images, in one run.

Per model (default LeViT-128S, CvT-13, EfficientNet-Lite0), batch 1, 1 and 2 threads:

* PyTorch eager fp32 (unfused, as timm builds it) and edgevt's fused model;
* edgevt: ONNX fp32 and int8 (ONNX Runtime), TFLite fp32 / fp16 / w8 / int8 (LiteRT, XNNPACK),
  int8 from one CalibrationTable (percentile, ``--calib-size`` images of imagenet-sample1000);
  for the transformers also TFLite int8 with matmuls, Softmax and activations in float (the
  fast recipe ``benchmarks/tflite_op_profile.py`` finds);
* onnxruntime ``quantize_static`` on edgevt's fp32 ONNX: QDQ, per-channel, its default
  calibration (MinMax), the same calibration images;
* litert-torch's own int8 quantizer (PT2E, per-channel symmetric, its HistogramObserver),
  the same calibration images;
* edgevt's OpenVINO fp32 / int8 (the int8 IR from the same table) and ExecuTorch fp32 / int8
  (``.pte``, XNNPACK, int8 from the same table), beside NNCF's ``nncf.quantize`` and
  ExecuTorch's own ``XNNPACKQuantizer`` on the same calibration images (peers: ``pip install
  nncf`` for the first; a peer that is missing or fails is a row saying so).

Accuracy on imagenet-val1000: top-1 for real checkpoints; for random weights, logit cosine and
top-1 agreement against the fused fp32 PyTorch model (top-1 of random weights means nothing).
Latency: median of interleaved rounds, so that machine noise hits every variant alike; ratios
are against PyTorch eager fp32 in the same run. The table goes to ``--out`` with the command.

    .venv/bin/python benchmarks/suite.py [--models levit_128s cvt_13 efficientnet_lite0]
        [--calib-size 128] [--limit 1000] [--limit-random 200] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from report_file import command_line, write_report  # noqa: E402

from edgevt import api
from edgevt.data.imagenet import default_data_root, open_dataset
from edgevt.models import get_entry, load_model
from edgevt.quant.calibrate import calibration_batches
from edgevt.targets import artifact_name, get_target
from edgevt.targets.base import Runner
from edgevt.targets.executorch import ExecutorchRunner
from edgevt.targets.onnx import OnnxRuntimeRunner
from edgevt.targets.openvino import OpenvinoRunner
from edgevt.targets.tflite import LiteRTRunner
from edgevt.timing import median_ms_loaded_in_turn
from edgevt.validate.evaluate import compare_logits

REPO = Path(__file__).resolve().parent.parent
# what ships to a device (PyTorch rows are references)
DEPLOYABLE = ("onnx", "tflite", "openvino", "executorch")
# `--float-ops` of the transformers' fast TFLite int8 (reports/tflite_op_profile_levit_128s.md)
FAST_FLOAT_OPS = ["BATCH_MATMUL", "HARD_SWISH", "SOFTMAX", "GELU"]


@dataclass
class Variant:
    name: str
    kind: str  # pytorch | onnx | tflite | openvino | executorch
    make: Callable[[int], Infer] | None  # threads -> a loaded variant
    size_mb: float | None = None
    error: str | None = None
    accuracy: dict[str, float] = field(default_factory=dict)
    ms: dict[int, float] = field(default_factory=dict)


class Infer:
    """One variant loaded at a thread count: call it on a batch, close it when done."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], close=lambda: None) -> None:
        self.fn, self.close = fn, close

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.fn(x)


def torch_infer(model: torch.nn.Module) -> Callable[[int], Infer]:
    def make(threads: int) -> Infer:
        def infer(x: np.ndarray) -> np.ndarray:
            torch.set_num_threads(threads)  # set per call: variants are interleaved
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()

        return Infer(infer)

    return make


def runner_infer(factory: Callable[[int], Runner]) -> Callable[[int], Infer]:
    def make(threads: int) -> Infer:
        runner = factory(threads)
        runner.activate()
        return Infer(runner.infer, runner.deactivate)

    return make


def ort_quantize_static(fp32: Path, out: Path, images: np.ndarray) -> Path:
    """What onnxruntime's documentation has a user do: QDQ, per-channel, default MinMax."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"images": x[None]} for x in images])

        def get_next(self):
            return next(self.items, None)

    pre = out.with_name("pre_" + out.name)
    quant_pre_process(str(fp32), str(pre))
    # Flush collected outputs every few images (CvT-13 would hold ~25 GB for 128 images):
    # memory only, the min/max ranges are the same. ORT refuses a final flush of nothing.
    flush = next(n for n in range(16, 1, -1) if len(images) % n)
    quantize_static(
        str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        extra_options={"CalibMaxIntermediateOutputs": flush},
    )  # fmt: skip
    return out


def litert_pt2e_int8(model: torch.nn.Module, out: Path, images: np.ndarray) -> Path:
    """litert-torch's own int8 route (its README): PT2E prepare, calibrate, convert."""
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    example = (torch.from_numpy(images[:1]),)
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    graph = torch.export.export(model.eval(), example).module()
    graph = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for x in images:
            graph(torch.from_numpy(x[None]))
    graph = convert_pt2e(graph, fold_quantize=False)
    edge = litert_torch.convert(graph, example, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    out.write_bytes(edge.model_content())
    return out


def nncf_int8(fp32_ir: Path, out: Path, images: np.ndarray) -> Path:
    """NNCF's own PTQ route (its documentation): ``nncf.quantize`` of the OpenVINO fp32 model on
    the calibration images, its default preset; edgevt's info copied in for the runner."""
    import dataclasses

    import nncf
    import openvino as ov

    from edgevt.targets.openvino import RT_INFO, XML, read_ir_info

    model = ov.Core().read_model(str(fp32_ir / XML))
    dataset = nncf.Dataset(list(images), lambda x: x[None])
    quantized = nncf.quantize(model, dataset, subset_size=len(images))
    info = dataclasses.replace(read_ir_info(fp32_ir), precision="int8")
    quantized.set_rt_info(info.to_json(), RT_INFO)
    ov.save_model(quantized, str(out / XML), compress_to_fp16=False)
    return out


def executorch_own_int8(model: torch.nn.Module, out: Path, images: np.ndarray,
                        info_from: Path) -> Path:  # fmt: skip
    """ExecuTorch's own int8 route (its XNNPACK tutorial): XNNPACKQuantizer, per-channel
    symmetric config with its HistogramObserver, PT2E prepare, calibrate, convert, lower."""
    import dataclasses

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgevt.targets.executorch import lower, read_pte_info

    example = (torch.from_numpy(images[:1]),)
    config = get_symmetric_quantization_config(is_per_channel=True)
    quantizer = XNNPACKQuantizer().set_global(config)
    graph = prepare_pt2e(torch.export.export(model.eval(), example).module(), quantizer)
    with torch.no_grad():
        for x in images:
            graph(torch.from_numpy(x[None]))
    graph = convert_pt2e(graph)
    info = dataclasses.replace(read_pte_info(info_from), precision="int8")
    lower(torch.export.export(graph, example), info, out)
    return out


def tflite_with_info(path: Path, info_from: Path) -> Callable[[int], Runner]:
    from edgevt.targets.tflite import read_tflite_info

    info = read_tflite_info(info_from)
    return lambda t: LiteRTRunner(path, threads=t, info=info)


def build_variants(name: str, work: Path, args: argparse.Namespace) -> list[Variant]:
    root = default_data_root()
    entry = get_entry(name)
    pretrained = entry.pretrained_path is not None
    calib = root / "imagenet-sample1000"
    eager = load_model(name, pretrained=pretrained).model.eval()
    onnx = api.export(name, "onnx", pretrained=pretrained, out=work / "onnx", int8=True,
                      calib=calib, calib_size=args.calib_size, progress=False)  # fmt: skip
    table = work / "onnx" / "calibration.json"
    tfl = api.export(name, "tflite", pretrained=pretrained, out=work / "tflite",
                     precisions=["fp16", "w8", "int8"], calib_table=table,
                     progress=False)  # fmt: skip
    fused = api.fuse(name, pretrained=pretrained).model
    images = np.concatenate(
        [b.numpy() for b in calibration_batches(entry.preprocess, calib, args.calib_size,
                                                progress=False)]  # fmt: skip
    )

    variants = [
        Variant("PyTorch eager fp32", "pytorch", torch_infer(eager)),
        Variant("PyTorch fused fp32", "pytorch", torch_infer(fused)),
    ]
    for label, path in (("edgevt ONNX fp32", onnx.artifact),
                        ("edgevt ONNX int8", onnx.int8.path)):  # fmt: skip
        variants.append(Variant(label, "onnx", runner_infer(
            lambda t, p=path: OnnxRuntimeRunner(p, threads=t)), size_of(path)))  # fmt: skip
    for precision in ("fp32", "fp16", "w8", "int8"):
        path = tfl.run_dir.path / artifact_name(get_target("tflite").spec, precision)
        variants.append(Variant(f"edgevt TFLite {precision}", "tflite", runner_infer(
            lambda t, p=path: LiteRTRunner(p, threads=t)), size_of(path)))  # fmt: skip
    if entry.family in ("levit", "cvt"):
        # The fast int8 recipe of benchmarks/tflite_op_profile.py: op types whose int8 kernels
        # cost more than they save on CPUs like this one stay float, the rest int8, same table.
        fast = api.export(name, "tflite", pretrained=pretrained, out=work / "tflite-fast",
                          precisions=["int8"], calib_table=table, float_ops=FAST_FLOAT_OPS,
                          progress=False)  # fmt: skip
        path = fast.run_dir.path / artifact_name(get_target("tflite").spec, "int8")
        variants.append(Variant("edgevt TFLite int8, fast recipe", "tflite", runner_infer(
            lambda t, p=path: LiteRTRunner(p, threads=t)), size_of(path)))  # fmt: skip
    ov = api.export(name, "openvino", pretrained=pretrained, out=work / "openvino", int8=True,
                    calib_table=table, progress=False)  # fmt: skip
    et = api.export(name, "executorch", pretrained=pretrained, out=work / "executorch",
                    int8=True, calib_table=table, calib=calib, calib_size=args.calib_size,
                    progress=False)  # fmt: skip
    for label, kind, path, runner in (
        ("edgevt OpenVINO fp32", "openvino", ov.artifact, OpenvinoRunner),
        ("edgevt OpenVINO int8", "openvino", ov.int8.path, OpenvinoRunner),
        ("edgevt ExecuTorch fp32", "executorch", et.artifact, ExecutorchRunner),
        ("edgevt ExecuTorch int8", "executorch", et.int8.path, ExecutorchRunner),
    ):
        variants.append(Variant(label, kind, runner_infer(
            lambda t, p=path, r=runner: r(p, threads=t)), size_of(path)))  # fmt: skip
    alternatives = (
        ("onnxruntime quantize_static int8", "onnx",
         lambda: ort_quantize_static(onnx.artifact, work / "ort_static.onnx", images),
         lambda p: (lambda t: OnnxRuntimeRunner(p, threads=t, info=onnx_info(onnx.artifact)))),
        ("litert-torch PT2E int8", "tflite",
         lambda: litert_pt2e_int8(fused, work / "litert_pt2e.tflite", images),
         lambda p: tflite_with_info(p, tfl.artifact)),
        ("NNCF nncf.quantize int8", "openvino",
         lambda: nncf_int8(ov.artifact, work / "nncf_int8.openvino", images),
         lambda p: (lambda t: OpenvinoRunner(p, threads=t))),
        ("ExecuTorch XNNPACKQuantizer int8", "executorch",
         lambda: executorch_own_int8(fused, work / "et_own_int8.pte", images, et.artifact),
         lambda p: (lambda t: ExecutorchRunner(p, threads=t))),
    )  # fmt: skip
    for label, kind, build, factory in alternatives:
        start = time.perf_counter()
        try:
            path = build()
            variants.append(Variant(label, kind, runner_infer(factory(path)), size_of(path)))
            print(f"  {label}: built in {time.perf_counter() - start:.0f} s", flush=True)
        except Exception as exc:  # an alternative that fails is a result too
            traceback.print_exc()
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            variants.append(Variant(label, kind, None, error=f"{type(exc).__name__}: {first}"))
    return variants


def size_of(path: Path) -> float:
    """MB of a file or an artifact folder (an OpenVINO IR)."""
    from edgevt.io import artifact_size

    return artifact_size(path) / 2**20


def onnx_info(path: Path):
    from edgevt.targets.onnx import read_onnx_info

    return read_onnx_info(path)


def measure_accuracy(name: str, variants: list[Variant], args: argparse.Namespace) -> None:
    entry = get_entry(name)
    pretrained = entry.pretrained_path is not None
    limit = args.limit if pretrained else args.limit_random
    dataset = open_dataset(default_data_root() / "imagenet-val1000").subset(limit)
    reference = next(v for v in variants if v.name == "PyTorch fused fp32")
    logits: dict[str, np.ndarray] = {}
    labels = None
    for v in variants:
        if v.make is None:
            continue
        infer = v.make(2)
        chunks, ys = [], []
        for images, y in dataset.batches(entry.preprocess, 25):
            chunks.append(np.concatenate([infer(images[i : i + 1]) for i in range(len(images))]))
            ys.append(y)
        infer.close()
        logits[v.name], labels = np.concatenate(chunks), np.concatenate(ys)
        print(f"  accuracy of {v.name}: done", flush=True)
    for v in variants:
        if v.name not in logits:
            continue
        cmp = compare_logits(logits[reference.name], logits[v.name])
        v.accuracy = {"cosine": cmp["cosine"], "agreement": cmp["top1_agreement"],
                      "n": len(labels)}  # fmt: skip
        if pretrained:
            v.accuracy["top1"] = 100 * float((logits[v.name].argmax(1) == labels).mean())


def measure_latency(name: str, variants: list[Variant], args: argparse.Namespace) -> None:
    x = next(open_dataset(default_data_root() / "imagenet-val1000").batches(
        get_entry(name).preprocess, 1))[0]  # fmt: skip
    live = [v for v in variants if v.make is not None]
    for threads in args.threads:

        def loader(v: Variant, threads: int = threads):
            infer = v.make(threads)
            return (lambda: infer(x)), infer.close

        medians = median_ms_loaded_in_turn(
            {v.name: (lambda v=v: loader(v)) for v in live}, args.rounds, args.iters
        )
        for v in live:
            v.ms[threads] = medians[v.name]


def table(name: str, variants: list[Variant], threads: list[int], pretrained: bool) -> list[str]:
    eager = variants[0].ms
    head = "| variant | MB | " + ("top-1 % | " if pretrained else "") + "cosine | agreement | "
    head += " | ".join(f"p50 ms {t}T | vs eager {t}T" for t in threads) + " |"
    lines = [f"### {name} ({'real checkpoint' if pretrained else 'random weights'})", "", head,
             "|" + "---|" * (head.count("|") - 1)]  # fmt: skip
    for v in variants:
        if v.error:
            lines.append(f"| {v.name} | failed: {v.error} |")
            continue
        a = v.accuracy
        cells = [v.name, f"{v.size_mb:.1f}" if v.size_mb else "–"]
        if pretrained:
            cells.append(f"{a['top1']:.1f}")
        cells += [f"{a['cosine']:.5f}", f"{a['agreement']:.3f}"]
        for t in threads:
            cells += [f"{v.ms[t]:.2f}", f"{eager[t] / v.ms[t]:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def bars(name: str, variants: list[Variant], threads: list[int]) -> list[str]:
    """Issue 5's LeViT bars: fusion >= 1.2x, fastest deployable >= 3x vs eager (per thread)."""
    eager, fused = variants[0], variants[1]
    lines = []
    for t in threads:
        deploy = [v for v in variants if v.kind in DEPLOYABLE and t in v.ms]
        best = min(deploy, key=lambda v: v.ms[t])
        lines.append(
            f"- {name}, {t} thread(s): fusion {eager.ms[t] / fused.ms[t]:.2f}x vs eager; fastest "
            f"deployable artifact {best.name} {eager.ms[t] / best.ms[t]:.2f}x vs eager."
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+",
                        default=["levit_128s", "cvt_13", "efficientnet_lite0"])  # fmt: skip
    parser.add_argument("--calib-size", type=int, default=128)
    parser.add_argument("--limit", type=int, default=1000, help="val images, real checkpoints")
    parser.add_argument("--limit-random", type=int, default=200, help="val images, random ones")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "benchmark_suite.md")
    args = parser.parse_args()
    started = time.perf_counter()
    sections, summary = [], []
    for name in args.models:
        print(f"[{name}] export, alternatives", flush=True)
        pretrained = get_entry(name).pretrained_path is not None
        with tempfile.TemporaryDirectory() as tmp:
            variants = build_variants(name, Path(tmp), args)
            print(f"[{name}] accuracy", flush=True)
            measure_accuracy(name, variants, args)
            print(f"[{name}] latency", flush=True)
            measure_latency(name, variants, args)
        sections += table(name, variants, args.threads, pretrained) + [""]
        summary += bars(name, variants, args.threads)
        print("\n".join(sections[-len(variants) - 6 :]), flush=True)
    import ai_edge_litert
    import onnxruntime

    text = "\n".join(
        [
            "# edgevt benchmark suite",
            "",
            f"Batch 1, this machine's CPU; calibration: {args.calib_size} images of "
            "imagenet-sample1000 for every int8 route; accuracy on imagenet-val1000 "
            f"({args.limit} images for real checkpoints, {args.limit_random} for random "
            "weights, whose top-1 means nothing: cosine and top-1 agreement are against the "
            "fused fp32 PyTorch model). Latency: median of interleaved rounds; `vs eager` is "
            "PyTorch eager fp32 (unfused) over the variant, measured in the same run.",
            "",
            *sections,
            "## Summary",
            "",
            *summary,
            "",
            f"Command: `{command_line()}` "
            f"({(time.perf_counter() - started) / 60:.0f} min); machine: {platform.machine()}, "
            f"{os.cpu_count()} CPUs, torch {torch.__version__}, onnxruntime "
            f"{onnxruntime.__version__}, ai-edge-litert "
            f"{getattr(ai_edge_litert, '__version__', '?')}, openvino {_version('openvino')}, "
            f"executorch {_version('executorch')}, nncf {_version('nncf')}.",
        ]
    )
    write_report(text + "\n", args.out)


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
