"""Why int8 files gain little from a second thread at batch 1: a profile, per runtime.

For each model, the fp32 and default int8 files of `onnx` and `tflite` that
`benchmarks/int8_recipes.py` wrote under --work (run it first) are timed at 1 and 2 threads
in interleaved rounds. From the two times, Amdahl's split: `serial ms = 2 x t2 - t1` is the
part a second thread did not halve (thread hand-offs, single-threaded ops, per-op overhead),
and `per op` spreads it over the operators that run (ONNX Runtime: nodes after its graph
optimizations; LiteRT: the .tflite operators, with how many XNNPACK partitions they form).
ONNX Runtime's own profiler then gives each op type's time at 1 and 2 threads for the int8
file, and one int8 matrix product of LeViT-128S's first stage (196 x 128 x 256), alone in a
graph, shows whether the int8 GEMM itself gains from the second thread.

    .venv/bin/python benchmarks/thread_scaling.py [--models levit_128s cvt_13
        efficientnet_lite0] [--work runs/int8-recipes] [--out reports/thread_scaling.md]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from report_file import command_line, cpu_flags, write_report  # noqa: E402  (benchmarks/)

from edgevt.data.imagenet import default_data_root, open_dataset
from edgevt.models import get_entry
from edgevt.runners import open_runner
from edgevt.timing import median_ms_loaded_in_turn, runner_turn

REPO = Path(__file__).resolve().parent.parent
FILES = {  # label: path under WORK/MODEL
    "onnx fp32": "onnx/model.onnx", "onnx int8": "onnx/model_int8.onnx",
    "tflite fp32": "tflite/model.tflite", "tflite int8": "tflite/model_int8.tflite",
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+",
                        default=["levit_128s", "cvt_13", "efficientnet_lite0"])  # fmt: skip
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "int8-recipes")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "thread_scaling.md")
    args = parser.parse_args()
    started = time.perf_counter()
    rows, op_tables = [], []
    for model in args.models:
        files = {k: args.work / model / p for k, p in FILES.items()}
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise SystemExit(f"missing {missing[0]}: run benchmarks/int8_recipes.py first.")
        x = image(model)
        ms = {t: median_ms_loaded_in_turn(
            {k: runner_turn(lambda p=p, t=t: open_runner(p, threads=t), x)
             for k, p in files.items()}, args.rounds, args.iters,
        ) for t in (1, 2)}  # fmt: skip
        for label, path in files.items():
            t1, t2 = ms[1][label], ms[2][label]
            ops, partitions = count_ops(path)
            serial = max(2 * t2 - t1, 0.0)
            rows.append(
                f"| {model} | {label} | {ops} | {partitions} | {t1:.2f} | {t2:.2f} | "
                f"{t1 / t2:.2f}x | {serial:.2f} ({serial / t1:.0%}) | {serial / ops * 1e3:.1f} |"
            )
        op_tables.append((model, ort_op_times(files["onnx int8"], x)))
        print(f"{model}: {time.perf_counter() - started:.0f} s", flush=True)
    gemm = one_gemm()
    write_report(render(rows, op_tables, gemm, time.perf_counter() - started), args.out)


def image(model: str) -> np.ndarray:
    entry = get_entry(model)
    dataset = open_dataset(default_data_root() / "imagenet-val1000").subset(1)
    return next(dataset.batches(entry.preprocess, 1))[0]


def count_ops(path: Path) -> tuple[int, str]:
    """Operators that run per inference, and the XNNPACK partitions (LiteRT) they form."""
    if path.suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path), num_threads=1)
        interpreter.allocate_tensors()
        ops = Counter(op["op_name"] for op in interpreter._get_ops_details())
        return sum(ops.values()) - ops["DELEGATE"], str(ops["DELEGATE"])
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return len(onnx.load(options.optimized_model_filepath).graph.node), "-"


def ort_op_times(path: Path, x: np.ndarray, runs: int = 50) -> dict[str, dict]:
    """Per op type: nodes, and mean microseconds per inference at 1 and 2 threads, from ONNX
    Runtime's profiler (after 10 warm-up runs)."""
    import onnxruntime as ort

    out: dict[str, dict] = defaultdict(lambda: {"n": 0, 1: 0.0, 2: 0.0})
    for threads in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            options.log_severity_level = 3
            options.enable_profiling, options.profile_file_prefix = True, f"{tmp}/p"
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            for _ in range(10 + runs):
                session.run(None, {name: x})
            events = json.loads(Path(session.end_profiling()).read_text())
        nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
        per_run = len(nodes) // (10 + runs)
        counted = Counter()
        for e in nodes[10 * per_run:]:  # after the warm-up runs
            op = e["args"]["op_name"]
            out[op][threads] += e["dur"] / runs
            counted[op] += 1
        for op, n in counted.items():
            out[op]["n"] = n // runs
    return dict(out)


def one_gemm(m: int = 196, k: int = 128, n: int = 256) -> dict[str, dict[int, float]]:
    """Microseconds of one (m x k) @ (k x n) product alone in a graph, fp32 and int8 (QDQ:
    ONNX Runtime runs it as QuantizeLinear + MatMulIntegerToFloat), at 1 and 2 threads."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((k, n)).astype(np.float32)
    x = rng.standard_normal((1, m, k)).astype(np.float32)

    def graph(int8: bool) -> bytes:
        inits = [numpy_helper.from_array(w if not int8 else
                                         np.round(w / 0.02).clip(-127, 127).astype(np.int8), "w")]
        nodes = []
        if int8:
            inits += [numpy_helper.from_array(np.array(v, dt), name) for v, dt, name in
                      [(0.02, np.float32, "s"), (0, np.int8, "z")]]  # fmt: skip
            nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
                     helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
                     helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wd"]),
                     helper.make_node("MatMul", ["xd", "wd"], ["y"])]  # fmt: skip
        else:
            nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
        g = helper.make_graph(
            nodes, "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, m, k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, m, n])], inits,
        )  # fmt: skip
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()

    out: dict[str, dict[int, float]] = {}
    for label, int8 in (("fp32", False), ("int8", True)):
        out[label] = {}
        for threads in (1, 2):
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            session = ort.InferenceSession(graph(int8), options,
                                           providers=["CPUExecutionProvider"])  # fmt: skip
            for _ in range(50):
                session.run(None, {"x": x})
            best = float("inf")
            for _ in range(7):
                start = time.perf_counter()
                for _ in range(200):
                    session.run(None, {"x": x})
                best = min(best, (time.perf_counter() - start) / 200 * 1e6)
            out[label][threads] = best
            del session
    return out


def render(rows: list[str], op_tables: list, gemm: dict, seconds: float) -> str:
    text = [
        "# Why int8 gains little from a second thread (batch 1)", "",
        f"This machine: 2 cores ({cpu_flags()}). Files: the fp32 and default int8 exports of "
        "`benchmarks/int8_recipes.py`; timed at 1 and 2 threads in interleaved rounds (a real "
        "image, batch 1). `serial` = 2 x t(2T) - t(1T), the part of the 1-thread time that the "
        "second thread did not halve (Amdahl); `per op` spreads it over the operators that "
        "run (ONNX Runtime: nodes after its graph optimizations; LiteRT: the file's operators "
        "and the XNNPACK partitions they form).", "",
        "| model | file | ops | XNNPACK partitions | ms 1T | ms 2T | 2T vs 1T | serial ms | "
        "serial us per op |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
        *rows, "",
        "## ONNX Runtime int8: time per op type (its profiler, us per inference)", "",
    ]  # fmt: skip
    for model, ops in op_tables:
        total = {t: sum(v[t] for v in ops.values()) for t in (1, 2)}
        text += [f"### {model}", "", "| op type | nodes | us 1T | us 2T | 2T vs 1T |",
                 "|---|--:|--:|--:|--:|"]  # fmt: skip
        for op, v in sorted(ops.items(), key=lambda kv: -kv[1][1])[:12]:
            text.append(f"| {op} | {v['n']} | {v[1]:.0f} | {v[2]:.0f} | "
                        f"{v[1] / max(v[2], 1e-9):.2f}x |")  # fmt: skip
        text += [f"| all nodes | {sum(v['n'] for v in ops.values())} | {total[1]:.0f} | "
                 f"{total[2]:.0f} | {total[1] / total[2]:.2f}x |", ""]  # fmt: skip
    text += [
        "## One GEMM alone (196 x 128 x 256, LeViT-128S's first stage), ONNX Runtime", "",
        "| precision | us 1T | us 2T | 2T vs 1T |", "|---|--:|--:|--:|",
        *[f"| {k} | {v[1]:.1f} | {v[2]:.1f} | {v[1] / v[2]:.2f}x |" for k, v in gemm.items()],
        "", f"Command: `{command_line()}` ({seconds / 60:.0f} min)",
    ]  # fmt: skip
    return "\n".join(text) + "\n"


if __name__ == "__main__":
    main()
