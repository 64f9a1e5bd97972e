#!/usr/bin/env python3
"""edgevt device bundle runner: check, then time, every model in this folder.

Standalone on purpose: it needs only numpy and the device's runtime (ai-edge-litert or
tflite-runtime for .tflite, onnxruntime for .onnx, TensorRT's Python API for .engine,
coremltools on macOS for .mlpackage, openvino for .openvino IR folders; a target plug-in may
ship its own ``load_<suffix>.py`` beside it). edgevt copies this file verbatim into every
bundle and runs the same file on the host in its tests.

    python3 run_bundle.py [--threads N] [--seconds S] [--iterations N] [--out results/]
        [--op-profile]

With ``--op-profile`` (a bundle made with ``edgevt bundle --op-profile``) it also times the
int8 op-type profile's files (full int8, one op type in float per file) in interleaved rounds,
so that ``edgevt export --profile-on RESULTS.json`` chooses the int8 recipe from this device's
own timings.

For each model listed in bundle.json it runs the bundled sample images, compares the logits with
the expected ones computed on the host (cosine and top-1 agreement; a model that fails the check
is reported and not timed), then times batch-1 inference and writes one results JSON that
`edgevt report` reads beside the host results.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MIN_COSINE = 0.99  # the device must reproduce the host's logits of the same artifact


class Model:
    """One loaded artifact: ``infer(nchw_float32) -> logits``."""

    def __init__(self, path: Path, threads: int, compute_units: str | None = None) -> None:
        self.path, self.threads = path, threads
        suffix = path.suffix
        if suffix == ".onnx":
            self.backend, self._run = self._onnxruntime()
        elif suffix == ".tflite":
            self.backend, self._run = self._litert()
        elif suffix == ".engine":
            self.backend, self._run = self._tensorrt()
        elif suffix == ".mlpackage":
            self.backend, self._run = self._coreml(compute_units or "ALL")
        elif suffix == ".openvino":
            self.backend, self._run = self._openvino()
        elif (HERE / f"load_{suffix[1:]}.py").is_file():
            # a target plug-in's own loader, shipped in the bundle by its Target.bundle_files:
            # ``load(path, threads) -> (backend, run)``
            import runpy

            load = runpy.run_path(str(HERE / f"load_{suffix[1:]}.py"))["load"]
            self.backend, self._run = load(path, threads)
        else:
            raise SystemExit(f"run_bundle: unknown model type {path.name}")

    def _openvino(self):
        try:
            import openvino as ov
        except ImportError:
            raise SystemExit("run_bundle: pip install openvino (needed for .openvino)") from None
        # f32 unless the file is the bf16 one: OpenVINO's CPU default on bf16-capable CPUs is
        # bf16, which is not what the host checked the fp32 and int8 files as
        meta = json.loads((HERE / "bundle.json").read_text())["models"][self.path.name]
        hint = "bf16" if meta.get("precision") == "bf16" else "f32"
        config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": self.threads}  # fmt: skip
        compiled = ov.Core().compile_model(str(self.path / "model.xml"), "CPU", config)
        request = compiled.create_infer_request()
        return f"openvino {ov.__version__}", lambda x: request.infer([x])[0]

    def _onnxruntime(self):
        try:
            import onnxruntime as ort
        except ImportError:
            raise SystemExit("run_bundle: pip install onnxruntime (needed for .onnx)") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        meta = json.loads((HERE / "bundle.json").read_text())["models"][self.path.name]
        if meta.get("ort_optimization") == "none":  # QDQ stand-in for TensorRT: exact numerics
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return f"onnxruntime {ort.__version__}", lambda x: session.run(None, {name: x})[0]

    def _litert(self):
        try:
            from ai_edge_litert.interpreter import Interpreter

            backend = "ai-edge-litert"
        except ImportError:
            try:
                from tflite_runtime.interpreter import Interpreter

                backend = "tflite-runtime"
            except ImportError:
                raise SystemExit(
                    "run_bundle: pip install ai-edge-litert (or tflite-runtime) for .tflite"
                ) from None
        interp = Interpreter(model_path=str(self.path), num_threads=self.threads)
        interp.allocate_tensors()
        inp, out = interp.get_input_details()[0], interp.get_output_details()[0]

        def run(x: np.ndarray) -> np.ndarray:
            if inp["shape"][-1] == 3:  # NHWC model
                x = x.transpose(0, 2, 3, 1)
            if inp["dtype"] != np.float32:  # integer input: quantize with the model's scale
                scale, zero = inp["quantization"]
                info = np.iinfo(inp["dtype"])
                x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(inp["dtype"])
            interp.set_tensor(inp["index"], np.ascontiguousarray(x))
            interp.invoke()
            y = interp.get_tensor(out["index"])
            if out["dtype"] != np.float32:
                scale, zero = out["quantization"]
                y = (y.astype(np.float32) - zero) * scale
            return y

        return backend, run

    def _tensorrt(self):
        try:
            import tensorrt as trt
        except ImportError:
            raise SystemExit(
                "run_bundle: the tensorrt Python package is missing (JetPack ships it); or "
                "use trtexec as the bundle README shows"
            ) from None
        logger = trt.Logger(trt.Logger.WARNING)
        engine = trt.Runtime(logger).deserialize_cuda_engine(self.path.read_bytes())
        context = engine.create_execution_context()
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inp = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        out = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)

        kind = cudart.cudaMemcpyKind
        buffers: dict[tuple, tuple] = {}  # device memory per input shape, allocated once

        def run(x: np.ndarray) -> np.ndarray:
            context.set_input_shape(inp, x.shape)
            y = np.empty(tuple(context.get_tensor_shape(out)), np.float32)
            if x.shape not in buffers:
                buffers[x.shape] = (cudart.cudaMalloc(x.nbytes)[1], cudart.cudaMalloc(y.nbytes)[1])
            d_in, d_out = buffers[x.shape]
            cudart.cudaMemcpy(d_in, x.ctypes.data, x.nbytes, kind.cudaMemcpyHostToDevice)
            context.set_tensor_address(inp, d_in)
            context.set_tensor_address(out, d_out)
            context.execute_async_v3(0)
            cudart.cudaMemcpy(y.ctypes.data, d_out, y.nbytes, kind.cudaMemcpyDeviceToHost)
            return y

        return f"tensorrt {trt.__version__}", run

    def _coreml(self, compute_units: str):
        try:
            import coremltools as ct
        except ImportError:
            raise SystemExit("run_bundle: pip install coremltools (on macOS)") from None
        model = ct.models.MLModel(
            str(self.path), compute_units=getattr(ct.ComputeUnit, compute_units)
        )
        spec = model.get_spec()
        inp, out = spec.description.input[0].name, spec.description.output[0].name
        return (
            f"coremltools {ct.__version__} ({compute_units})",
            lambda x: np.asarray(model.predict({inp: x})[out]),
        )

    def infer(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._run(np.ascontiguousarray(x, dtype=np.float32)), np.float32)


def check(model: Model, inputs: np.ndarray, expected: np.ndarray) -> dict:
    """Logits on the bundled samples vs the host's, one image at a time (batch-1 engines)."""
    got = np.concatenate([model.infer(inputs[i : i + 1]) for i in range(len(inputs))])
    a, b = got.reshape(len(got), -1), expected.reshape(len(expected), -1)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    agree = float((a.argmax(1) == b.argmax(1)).mean())
    return {
        "cosine": float(cos.mean()),
        "top1_agreement": agree,
        "max_abs_diff": float(np.abs(a - b).max()),
        "passed": bool(cos.mean() >= MIN_COSINE),
    }


def build_engine(
    onnx_path: Path, engine_path: Path, int8: bool, max_batch: int = 1, workspace_gib: float = 1.0
) -> Path:
    """Build a TensorRT engine from an ONNX file with TensorRT's Python API (8.6/10.x), as
    trtexec.sh would: ``--int8 --fp16`` for a QDQ graph (explicit quantization, the Q/DQ
    nodes carry the scales), ``--fp16`` otherwise; batch 1 to ``max_batch``. The one builder:
    ``edgevt.targets.tensorrt`` calls it too (a bundle cannot import edgevt)."""
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
        raise RuntimeError(f"TensorRT could not parse {Path(onnx_path).name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    config.set_flag(trt.BuilderFlag.FP16)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
    name = network.get_input(0).name
    size = tuple(network.get_input(0).shape)[1:]
    profile = builder.create_optimization_profile()
    profile.set_shape(name, (1, *size), (1, *size), (max_batch, *size))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build {Path(engine_path).name} (log above)")
    tmp = Path(engine_path).with_name(Path(engine_path).name + ".partial")
    tmp.write_bytes(bytes(serialized))
    os.replace(tmp, engine_path)  # atomic: an interrupted build leaves no half engine
    return Path(engine_path)


def ready(name: str, build: dict) -> bool:
    """Whether a file the device builds (a TensorRT engine) is there, building it with
    TensorRT's Python API when it can; else say how and run the rest."""
    path = HERE / "models" / name
    if path.exists():
        return True
    if not name.endswith(".engine"):
        print(f"{name}: not built yet ({build['build']}); skipped", flush=True)
        return False
    try:
        import tensorrt as trt
    except ImportError:
        print(f"{name}: not built yet and TensorRT's Python API is missing here: run "
              "./trtexec.sh first (JetPack ships trtexec); skipped", flush=True)  # fmt: skip
        return False
    print(f"{name}: building from {build['from']} with TensorRT {trt.__version__} (minutes on a "
          "Jetson)", flush=True)  # fmt: skip
    try:
        build_engine(HERE / "models" / build["from"], path, build["precision"] == "int8")
    except RuntimeError as exc:
        raise SystemExit(f"run_bundle: {exc}") from None
    return True


def evaluate(model: Model, name: str, bundle: dict, arrays) -> dict:
    """Top-1/top-5 on the bundle's labelled images (uint8 crops, normalised here as the host
    does), and image by image against this file's and the fp32 file's answers on the host:
    lost / won with McNemar's exact p, so a gap beyond noise stands out. ``name`` is the
    bundled file whose host answers it is held to (an engine's: its ONNX file's)."""
    meta = bundle["eval"]
    mean, std = np.asarray(meta["mean"], np.float32), np.asarray(meta["std"], np.float32)
    labels = arrays["labels"]
    top5 = []
    for crop in arrays["images"]:
        x = ((np.asarray(crop, np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)[None]
        top5.append(np.argsort(-model.infer(np.ascontiguousarray(x))[0])[:5])
    top5 = np.stack(top5)
    host = meta["host"][name]
    host_top1 = arrays[host["top5"]][:, 0]
    fp32 = host.get("fp32", meta["reference"])  # the same runtime's fp32 file (older bundles: one)
    fp32_top1 = arrays[meta["host"][fp32]["top5"]][:, 0]
    right, host_right = top5[:, 0] == labels, host_top1 == labels
    lost, won = int((host_right & ~right).sum()), int((~host_right & right).sum())
    return {
        "n": int(len(labels)),
        "top1": 100.0 * float(right.mean()),
        "top5": 100.0 * float((top5 == labels[:, None]).any(1).mean()),
        "host_top1": host["top1_pct"],
        "host_top5": host["top5_pct"],
        "agreement_host": float((top5[:, 0] == host_top1).mean()),
        "agreement_host_fp32": float((top5[:, 0] == fp32_top1).mean()),
        "lost": lost,
        "won": won,
        "p_value": mcnemar(lost, won),
    }


def mcnemar(lost: int, won: int) -> float:
    """Exact two-sided McNemar p of a lost/won split (the binomial test at 1/2): the same
    as ``edgevt.validate.significance.mcnemar_p``, restated because a bundle cannot import
    edgevt (a test holds the two equal)."""
    from math import comb

    n = lost + won
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(lost, won) + 1)) / 2**n
    return min(1.0, 2 * tail)


def time_model(model: Model, x: np.ndarray, warmup: int, seconds: float, iterations: int) -> dict:
    for _ in range(warmup):
        model.infer(x)
    times = []
    start = time.perf_counter()
    while len(times) < iterations or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        model.infer(x)
        times.append((time.perf_counter() - t0) * 1e3)
    ms = np.asarray(times)
    return {
        "iterations": len(times),
        "warmup": warmup,
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "throughput_ips": float(1e3 / ms.mean()),
    }


PROFILE_TURN_MS = 300.0  # each file's turn: about this long, 3 to 10 calls


def time_op_profile(section: dict, threads: list[int], x: np.ndarray, rounds: int) -> dict:
    """The profile's files timed at each thread count: ``rounds`` interleaved rounds, each
    file loaded only for its turn (a slow device must not hold 20 models at once), the median
    of the per-turn medians (ms, batch 1)."""
    ms: dict[str, dict[str, float]] = {key: {} for key in section["files"]}
    for t in threads:
        turns: dict[str, list[float]] = {key: [] for key in section["files"]}
        for r in range(rounds):
            for key, name in section["files"].items():
                model = Model(HERE / "models" / name, t)
                model.infer(x)  # warm-up: allocation, packing
                t0 = time.perf_counter()
                model.infer(x)
                first = (time.perf_counter() - t0) * 1e3
                times = []
                for _ in range(max(3, min(10, int(PROFILE_TURN_MS / max(first, 1e-3))))):
                    t0 = time.perf_counter()
                    model.infer(x)
                    times.append((time.perf_counter() - t0) * 1e3)
                turns[key].append(float(np.median(times)))
                del model
            print(f"op profile: round {r + 1}/{rounds} at {t} thread(s)", flush=True)
        for key, values in turns.items():
            ms[key][str(t)] = float(np.median(values))
    return {**section, "ms": ms, "rounds": rounds}


def main(argv: list[str] | None = None) -> int:
    bundle = json.loads((HERE / "bundle.json").read_text())
    parser = argparse.ArgumentParser(description="check, then time, the bundled models")
    parser.add_argument("--threads", type=int, nargs="+", default=bundle["threads"])
    parser.add_argument("--seconds", type=float, default=5.0, help="time each model this long")
    parser.add_argument("--iterations", type=int, default=50, help="and at least this often")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--compute-units", default=None, help="Core ML: CPU_ONLY, ALL, ...")
    parser.add_argument("--models", nargs="+", help="only these files from bundle.json")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--no-eval", action="store_true",
                        help="skip the accuracy run on the bundled labelled images")
    parser.add_argument("--check-only", action="store_true",
                        help="check every model, score and time none")
    parser.add_argument("--no-timing", action="store_true",
                        help="check and score, time none (under emulation time means nothing)")
    parser.add_argument("--emulated", default=None,
                        help="what emulated the device (recorded; e.g. 'aarch64 (cortex-a76)')")
    parser.add_argument("--op-profile", action="store_true",
                        help="also time the int8 op-type profile's files (edgevt bundle "
                        "--op-profile), for `edgevt export --profile-on RESULTS.json`")
    parser.add_argument("--profile-rounds", type=int, default=5,
                        help="interleaved rounds of the op profile (default 5)")
    args = parser.parse_args(argv)
    if args.op_profile and "op_profile" not in bundle:
        raise SystemExit("run_bundle: --op-profile: this bundle carries no op profile; make it "
                         "with `edgevt bundle RUN --device ... --op-profile`")  # fmt: skip
    if args.op_profile and (args.emulated or args.no_timing or args.check_only):
        raise SystemExit("run_bundle: --op-profile times files; it does not go with "
                         "--emulated, --no-timing or --check-only")  # fmt: skip

    samples = np.load(HERE / "samples.npz")
    inputs = samples["inputs"]
    scored = "eval" in bundle and not (args.no_eval or args.check_only)
    evaluation = np.load(HERE / "eval.npz") if scored else None
    known = [*bundle["models"], *bundle.get("builds", {})]
    unknown = [m for m in args.models or [] if m not in known]
    if unknown:
        raise SystemExit(f"run_bundle: --models {' '.join(unknown)}: not in this bundle (it runs "
                         f"{', '.join(known)})")  # fmt: skip
    # the bundled files, then what the device builds from them (TensorRT engines), each held
    # to its source's host results
    runs = [(name, name, meta["precision"], meta) for name, meta in bundle["models"].items()]
    for name, build in bundle.get("builds", {}).items():
        if (not args.models or name in args.models) and ready(name, build):
            source = dict(bundle["models"][build["from"]], target=build.get("target"))
            source["size_bytes"] = (HERE / "models" / name).stat().st_size
            runs.append((name, build["from"], build["precision"], source))
    rows = []
    for name, source, precision, meta in runs:
        if args.models and name not in args.models:
            continue
        for threads in args.threads:
            model = Model(HERE / "models" / name, threads, args.compute_units)
            verdict = check(model, inputs, samples[meta["expected"]])
            row = {
                "artifact": name,
                "run": bundle.get("run"),
                "model": bundle["model"],
                "precision": precision,
                "target": meta.get("target"),
                "backend": model.backend,
                "threads": threads,
                "batch": 1,
                "size_bytes": meta["size_bytes"],
                "check": verdict,
                **({"built_from": source} if name != source else {}),
            }
            status = "ok" if verdict["passed"] else "FAILED"
            print(
                f"{name}: check {status} (cosine {verdict['cosine']:.5f}, top-1 agreement "
                f"{verdict['top1_agreement']:.2f}) [{model.backend}, {threads} thread(s)]",
                flush=True,
            )
            if verdict["passed"] and evaluation is not None and threads == args.threads[0]:
                row["accuracy"] = a = evaluate(model, source, bundle, evaluation)
                print(f"  top-1 {a['top1']:.2f} %  top-5 {a['top5']:.2f} % on {a['n']} images "
                      f"(host {a['host_top1']:.2f} %; {a['lost']} lost / {a['won']} won, "
                      f"p={a['p_value']:.2g}; agreement with host fp32 "
                      f"{100 * a['agreement_host_fp32']:.1f} %)", flush=True)  # fmt: skip
            if verdict["passed"] and not (args.check_only or args.no_timing):
                row.update(time_model(model, inputs[:1], args.warmup, args.seconds,
                                      args.iterations))  # fmt: skip
                print(f"  p50 {row['p50_ms']:.2f} ms  p90 {row['p90_ms']:.2f} ms", flush=True)
            rows.append(row)
    result = {
        "format": "edgevt.device-results/1",
        "device": bundle["device"],
        "host": {
            "hostname": platform.node(),
            "machine": platform.machine(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017  (the device may run Python 3.10)
        "results": rows,
    }
    if args.emulated:  # never a device timing: what ran was an emulator on another machine
        result["emulated"] = args.emulated
    if args.op_profile and all(r["check"]["passed"] for r in rows):
        result["op_profile"] = time_op_profile(bundle["op_profile"], args.threads, inputs[:1],
                                               args.profile_rounds)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = args.out / f"{bundle['device']}-{stamp}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)  # atomic: a killed run leaves no half-written results
    print(f"results: {path}")
    return 0 if all(r["check"]["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
