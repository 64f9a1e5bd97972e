"""The accuracy-latency report: what int8 (or a target) costs in accuracy and gains in speed.

Reads run directories (their manifest: evaluation results, calibration settings, sensitivity)
with their ``bench/*.json`` host timings, plus device results from ``run_bundle.py``, and writes
``report.md``, a self-contained ``report.html`` (plots are inline SVG: no scripts, no network)
and ``report.json`` with every number that went into them.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgevt.artifact import ArtifactInfo
from edgevt.errors import EdgevtError, path_problem
from edgevt.io import artifact_size, atomic_path


@dataclass
class Row:
    """One artifact (or the PyTorch reference) of one run."""

    run: str
    model: str
    weights: str  # "real" or "random"
    artifact: str
    target: str
    precision: str
    top1: float | None = None
    top5: float | None = None
    n: int | None = None
    agreement: float | None = None  # top-1 agreement with the fp32 PyTorch model
    cosine: float | None = None
    size_mb: float | None = None
    lost: int | None = None  # images fp32 gets right and this artifact wrong
    won: int | None = None  # and the reverse
    p_value: float | None = None  # exact McNemar test of lost vs won


@dataclass
class Timing:
    """One latency measurement: on the host (``edgevt bench``) or on a device (a bundle)."""

    run: str
    model: str
    artifact: str
    precision: str
    where: str  # "host" or the device name
    backend: str
    threads: int
    p50_ms: float
    p90_ms: float
    target: str = "?"  # from the artifact's own info
    speedup: float | None = None  # vs the fp32 artifact of the same run, place and threads


@dataclass
class Report:
    rows: list[Row]
    timings: list[Timing]
    calibration: list[dict[str, Any]]
    sensitivity: dict[str, dict[str, Any]]  # run -> sensitivity.json
    debug: list[dict[str, Any]] = field(default_factory=list)  # RUN/debug/*.json summaries
    # run_bundle.py's check of each file against the host's logits, per device (or emulator)
    checks: list[dict[str, Any]] = field(default_factory=list)
    # run_bundle.py's top-1/top-5 on the bundle's labelled images, beside the host's
    device_accuracy: list[dict[str, Any]] = field(default_factory=list)
    # RUN/op_profile_<target>.json: what each op type costs in int8 (`edgevt profile`)
    profiles: list[dict[str, Any]] = field(default_factory=list)
    # RUN/instructions_<device>_<core>.json: aarch64 instructions per inference, emulated
    instructions: list[dict[str, Any]] = field(default_factory=list)
    # a sweep's best artifact per model and place within its accuracy budget (edgevt.leaderboard)
    leaderboard: list[dict[str, Any]] = field(default_factory=list)
    leaderboard_budget: float | None = None


def _load_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgevtError(f"cannot read {what} {path} (corrupt? {exc}); write it again.") from exc
    if not isinstance(data, dict):
        raise EdgevtError(
            f"{what} {path} is not a JSON object — pass the file edgevt wrote, or write it again."
        )
    return data


def collect(
    run_dirs: list[Path],
    device_results: list[Path] = (),
    names: dict[Path, str] | None = None,
) -> Report:
    """``names``: a run directory -> the name its rows get (default: its folder's name; a
    sweep names them ``group/run``, since every group has an ``onnx-int8``)."""
    report = Report([], [], [], {})
    owners: dict[str, tuple[str, str]] = {}  # artifact file name -> (run, model)
    for run_dir in run_dirs:
        try:
            _collect_run(Path(run_dir), report, owners, (names or {}).get(Path(run_dir)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EdgevtError(
                f"run {run_dir} holds a damaged record ({type(exc).__name__}: {exc}) in its "
                "manifest or the eval/calibration/sensitivity files beside it; re-run the stage "
                "that wrote it (`edgevt export`, `edgevt eval`), or export into a fresh -o folder."
            ) from None
    for path in dict.fromkeys(Path(p).resolve() for p in device_results):  # each file once
        _collect_device(path, report, owners, names or {})
    _speedups(report.timings)
    if not report.rows and not report.timings and not report.checks:
        raise EdgevtError("nothing to report: the runs hold no evaluation or benchmark results.")
    return report


def _artifacts(run_dir: Path) -> dict[str, ArtifactInfo]:
    """Every artifact of a run, with what it says about itself (its model, target, precision)."""
    from edgevt.targets import read_artifact_info, target_for_path

    return {
        p.name: read_artifact_info(p)
        for p in sorted(run_dir.iterdir())
        if not p.name.startswith(".") and target_for_path(p) is not None
    }


def _score(value: Any) -> float | None:
    """A top-1/top-5 or agreement from a record: absent, or a finite number in [0, 100]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"score {value!r} is not a number")
    if not (math.isfinite(value) and 0 <= value <= 100):
        raise ValueError(f"score {value!r} is not a finite percentage")
    return float(value)


def _debug_summary(path: Path, run: str) -> dict[str, Any]:
    """One `edgevt debug` result, as the report lists it (with its page, when there is one)."""
    data = _load_json(path, "debug result")
    share = data["faithful_share"]
    if not _finite(share) or not 0 <= share <= 1:
        raise ValueError(f"{path.name}: faithful_share {share!r}")
    page = path.with_suffix(".html")
    return {
        "run": run, "file": Path(str(data["artifact"])).name, "target": str(data["target"]),
        "images": int(data["images"]), "faithful": 100 * share,
        "departures": len(data["departures"]), "drifted": len(data.get("drifted", [])),
        "sqnr_db": _number(data["logits"]["sqnr_fp32_db"]),
        "page": page if page.is_file() else None,
    }  # fmt: skip


def _count(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"image count {value!r} is not a whole number")
    return value


def _number(value: Any) -> float | None:
    """A cosine, an agreement, an SQNR: absent, or a finite number."""
    if value is None:
        return None
    if not _finite(value):
        raise ValueError(f"{value!r} is not a finite number")
    return float(value)


def _check_sensitivity(data: dict[str, Any]) -> dict[str, Any]:
    ranking = data.get("ranking", [])
    if not isinstance(ranking, list) or not all(
        isinstance(r, dict) and isinstance(r.get("op"), str) and _finite(r.get("kl"))
        for r in ranking
    ):
        raise ValueError("sensitivity.json: ranking is not a list of {op, kl} with finite kl")
    if not isinstance(data.get("kept_float", []), list):
        raise ValueError("sensitivity.json: kept_float is not a list")
    return data


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _evaluations(stages: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every stage's evaluation results (file name or ``pytorch_fp32`` -> scores)."""
    out: dict[str, dict[str, Any]] = {}
    for stage in stages.values():
        found = _stage_results(stage).get("evaluations")
        if isinstance(found, dict):
            out.update(found)
    return out


def _stage_results(stage: Any) -> dict[str, Any]:
    results = stage.get("results") if isinstance(stage, dict) else None
    return results if isinstance(results, dict) else {}


def _records(stages: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The typed artifact records of every stage (file name -> record), whatever the stage."""
    out = {}
    for stage in stages.values():
        records = _stage_results(stage).get("artifacts")
        for record in records if isinstance(records, list) else []:
            if isinstance(record, dict) and "file" in record:
                out[record["file"]] = record
    return out


def _collect_run(
    run_dir: Path, report: Report, owners: dict[str, tuple[str, str]], run_name: str | None = None
) -> None:
    manifest_path = run_dir / "manifest.json"
    if not run_dir.is_dir():
        raise EdgevtError(
            path_problem(run_dir, "run directory", folder=True)
            + "; pass the -o folder of `edgevt export`."
        )
    if not manifest_path.is_file():
        raise EdgevtError(
            f"{run_dir} is not a run directory (no manifest.json) — pass the -o folder of "
            "`edgevt export`."
        )
    from edgevt.run import check_recorded_files, read_manifest

    manifest = read_manifest(run_dir)
    check_recorded_files(run_dir, manifest)
    stages = manifest["stages"]
    if not stages:
        raise EdgevtError(f"{manifest_path} records no stages; re-run `edgevt export`.")
    run = run_name or run_dir.name
    inputs = next(iter(stages.values()), {}).get("inputs", {})
    model = inputs.get("model", "?")
    if not isinstance(model, str) or not isinstance(inputs.get("weights", ""), str):
        raise ValueError("its inputs' model and weights must be strings")
    weights = "random" if str(inputs.get("weights", "")).startswith("random") else "real"
    evals = _evaluations(stages)
    ref = evals.get("pytorch_fp32")
    if ref:
        report.rows.append(
            Row(run, model, weights, "PyTorch (unfused)", "pytorch", "fp32", _score(ref["top1"]),
                _score(ref["top5"]), _count(ref["n"]), 1.0, 1.0)
        )  # fmt: skip
    infos = _artifacts(run_dir)
    for name, info in infos.items():
        owners[name] = (run, info.model)
        result = evals.get(name, {})
        vs = result.get("vs_pytorch_fp32", {})
        report.rows.append(
            Row(
                run, info.model, weights, name, info.target, info.precision,
                _score(result.get("top1")), _score(result.get("top5")), _count(result.get("n")),
                _number(vs.get("top1_agreement")), _number(vs.get("cosine")),
                artifact_size(run_dir / name) / 1e6,
                vs.get("lost"), vs.get("won"), vs.get("p_value"),
            )
        )  # fmt: skip
    for path in sorted((run_dir / "bench").glob("*.json")):
        report.timings.append(_host_timing(path, run, model, infos))
    table = run_dir / "calibration.json"
    if table.is_file():
        report.calibration.append(_calibration(table, run, _records(stages)))
    for path in sorted((run_dir / "debug").glob("*.json")):
        report.debug.append(_debug_summary(path, run))
    for path in sorted(run_dir.glob("op_profile_*.json")):
        report.profiles.append(_op_profile(path, run))
    for path in sorted(run_dir.glob("instructions_*.json")):
        report.instructions += _instructions(path, run)
    if (run_dir / "sensitivity.json").is_file():
        report.sensitivity[run] = _check_sensitivity(
            _load_json(run_dir / "sensitivity.json", "sensitivity")
        )


def _op_profile(path: Path, run: str) -> dict[str, Any]:
    """One run's op-type profile, with what each ``--optimize`` mode keeps in float."""
    from edgevt.op_profile import OPTIMIZE, OpProfile, choose

    profile = OpProfile.load(path)
    recipes = {mode: choose(profile, mode) for mode in OPTIMIZE}
    return {"run": run, "file": path.name, "profile": profile.to_dict(), "recipes": recipes}


def profile_table(entry: dict[str, Any]) -> list[list[str]]:
    """One row per op type: its int8 cost, the cosine float buys, the modes that keep it."""
    from edgevt.op_profile import OpProfile

    profile = OpProfile.from_dict(entry["profile"])
    base = profile.base
    table = [["op type", "count", f"int8 cost {profile.unit} ({base}T)", "cosine gain in float",
              "kept in float by"]]  # fmt: skip
    for v in profile.types:
        op = v.float_types[0]
        modes = [m for m, types in entry["recipes"].items() if op in types]
        table.append([op, str(profile.census.get(op, "")), f"{profile.cost(op):+.2f}",
                      f"{profile.gain(op):+.4f}", ", ".join(modes) or "none"])  # fmt: skip
    for g in profile.groups:  # several types together: its cost and gain against full int8
        modes = [m for m, types in entry["recipes"].items() if types == sorted(g.float_types)]
        label = " + ".join(g.float_types) + f" ({g.partitions} XNNPACK partitions)"
        cost, gain = profile.full.ms[base] - g.ms[base], g.cosine - profile.full.cosine
        table.append([label, "", f"{cost:+.2f}", f"{gain:+.4f}", ", ".join(modes) or "none"])
    return table


def _instructions(path: Path, run: str) -> list[dict[str, Any]]:
    """`edgevt profile --emulate`'s counts, one row per file, with the ratio to fp32's."""
    data = _load_json(path, "instruction counts")
    files = data["files"]
    base = next((f["instructions"] for f in files.values() if f["precision"] == "fp32"), None)
    rows = []
    for name, f in files.items():
        count = _positive_int(f["instructions"], "instructions")
        rows.append({"run": run, "artifact": name, "precision": str(f["precision"]),
                     "device": str(data["device"]), "core": str(data["core"]),
                     "instructions": count, "vs_fp32": base / count if base else None})  # fmt: skip
    return rows


def instructions_table(report: Report) -> list[list[str]]:
    table = [["run", "artifact", "precision", "device (emulated core)", "M instructions",
              "fewer than fp32"]]  # fmt: skip
    for r in report.instructions:
        table.append([r["run"], r["artifact"], r["precision"], f"{r['device']} ({r['core']})",
                      f"{r['instructions'] / 1e6:.1f}",
                      f"{r['vs_fp32']:.2f}x" if r["vs_fp32"] else "–"])  # fmt: skip
    return table


INSTRUCTIONS_NOTE = (
    "aarch64 instructions one inference executes on the device's core under qemu (1 thread, "
    "`edgevt profile --emulate`): what the runtime's kernel choice for that core costs. An "
    "instruction count, not a time."
)


RECIPES_NOTE = (
    "Each measured candidate (fp32, full int8, int8 with one op type in float) by its cost and "
    "its logit cosine to fp32; red: the Pareto front, none cheaper and closer to fp32."
)


def _profile_caption(entry: dict[str, Any]) -> str:
    p = entry["profile"]
    base, unit = max(p["threads"]), p.get("unit", "ms")
    counted = "" if unit == "ms" else " (instructions per inference, not a time)"
    return (f"{entry['run']} ({p['model']}, {p['target']}, {p['host']}{counted}): fp32 "
            f"{p['fp32']['ms'][base]:.2f} {unit}, full int8 {p['full']['ms'][base]:.2f} {unit} "
            f"at {base} thread(s); full int8 cosine to fp32 {p['full']['cosine']:.4f}. int8 "
            "cost: full int8 minus the file with that op type in float (positive: costlier in "
            "int8).")  # fmt: skip


def _host_timing(path: Path, run: str, model: str, infos: dict[str, ArtifactInfo]) -> Timing:
    bench = _load_json(path, "benchmark result")
    try:
        runner = bench["runner"]
        artifact = Path(runner.get("artifact", "?")).name
        info = infos.get(artifact)
        return Timing(
            run, model, artifact, info.precision if info else runner.get("precision", "?"),
            "host", runner.get("backend", "?"),
            0 if runner.get("threads") is None else _positive_int(runner["threads"], "threads"),
            _time(bench["p50_ms"]), _time(bench["p90_ms"]),
            target=info.target if info else "pytorch",
        )  # fmt: skip
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise EdgevtError(
            f"benchmark result {path} lacks {exc} or has a wrong value; re-run `edgevt bench`."
        ) from None


def _calibration(table: Path, run: str, records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    data = _load_json(table, "calibration table")
    source = data.get("source", {})
    float_ops = [
        op
        for r in records.values()
        if r.get("quantization")
        for op in r["quantization"].get("float_ops", [])
    ]
    return {
        "run": run,
        "method": data.get("method", source.get("method")),
        "images": source.get("images"),
        "data": source.get("data"),
        "percentile": source.get("percentile"),
        "float_ops": float_ops,
    }


def _collect_device(
    path: Path,
    report: Report,
    owners: dict[str, tuple[str, str]],
    names: dict[Path, str] | None = None,
) -> None:
    if not path.is_file():
        raise EdgevtError(
            path_problem(path, "device results")
            + "; pass the results/*.json that run_bundle.py wrote."
        )
    data = _load_json(path, "device results")
    if data.get("format") != "edgevt.device-results/1":
        raise EdgevtError(f"{path} is not a results file written by run_bundle.py.")
    if not data.get("results") or not isinstance(data["results"], list) or not all(
        isinstance(r, dict) for r in data["results"]
    ):
        raise EdgevtError(
            f"device results {path}: results must be a non-empty list of per-artifact objects; "
            "re-run run_bundle.py."
        )
    if not isinstance(data.get("finished", ""), str):
        raise EdgevtError(
            f"device results {path}: finished must be a time stamp string, not "
            f"{data['finished']!r}; re-run run_bundle.py."
        )
    if not isinstance(data.get("device"), str) or not isinstance(data.get("host", {}), dict):
        raise EdgevtError(
            f"device results {path}: device must be a profile name and host an object; re-run "
            "run_bundle.py."
        )
    try:
        where = _device_label(data)
        for r in data["results"]:
            check = r.get("check")
            if isinstance(check, dict) and {"cosine", "top1_agreement"} <= set(check):
                report.checks.append({
                    "where": where, "artifact": str(r["artifact"]), "backend": str(r["backend"]),
                    "precision": str(r["precision"]), "threads": r.get("threads"),
                    "cosine": _number(check["cosine"]),
                    "agreement": _number(check["top1_agreement"]),
                    "passed": check.get("passed") is True,
                })  # fmt: skip
            scored = r.get("accuracy")
            if isinstance(scored, dict):
                report.device_accuracy.append({
                    "where": where, "artifact": str(r["artifact"]), "backend": str(r["backend"]),
                    "precision": str(r["precision"]), "n": _count(scored["n"]),
                    **{k: _number(scored[k]) for k in ("top1", "top5", "host_top1", "p_value")},
                    "lost": _count(scored["lost"]), "won": _count(scored["won"]),
                })  # fmt: skip
            if "p50_ms" not in r:  # failed its check, or a check-only (emulated) run: not timed
                continue
            if not isinstance(r.get("check", {}), dict):
                raise ValueError(f"check {r['check']!r}")
            for field in ("precision", "backend", "artifact"):
                if not isinstance(r[field], str):
                    raise ValueError(f"{field} {r[field]!r}")
            for field in ("model", "run"):
                if not isinstance(r.get(field, ""), str):
                    raise ValueError(f"{field} {r[field]!r}")
            _positive_int(r.get("batch", 1), "batch")
            run, model = owners.get(r["artifact"], ("device", r.get("model", "?")))
            run = r.get("run") or run  # bundles name the run they came from
            run = _renamed(path, run, names or {})
            target = next((x.target for x in report.rows
                           if (x.run, x.artifact) == (run, r["artifact"])),
                          r.get("target") or "?")  # fmt: skip
            report.timings.append(
                Timing(run, r.get("model", model), r["artifact"], r["precision"], where,
                       r["backend"], _positive_int(r["threads"], "threads"), _time(r["p50_ms"]),
                       _time(r["p90_ms"]), target=target)
            )  # fmt: skip
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise EdgevtError(
            f"device results {path} lack {exc} or hold a wrong value; re-run run_bundle.py."
        ) from None


def _renamed(results: Path, run: str, names: dict[Path, str]) -> str:
    """A renamed run's name for a bundle's results inside the same output folder (a sweep
    group's ``bundles/<device>/results/``): ``onnx-int8`` -> ``lite0/onnx-int8``."""
    for run_dir, name in names.items():
        if run_dir.name == run and results.is_relative_to(Path(run_dir).resolve().parent):
            return name
    return run


def _time(value: Any) -> float:
    """A latency in ms: finite and positive, or the file is damaged."""
    if isinstance(value, bool):
        raise ValueError(f"latency {value!r} ms")
    ms = float(value)
    if not (math.isfinite(ms) and ms > 0):
        raise ValueError(f"latency {value!r} ms")
    return ms


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} {value!r}")
    return value


def _speedups(timings: list[Timing]) -> None:
    """Speed-up against the fp32 artifact of the same run, place and threads, of the same
    target where there is one (a .tflite against model.tflite)."""
    for t in timings:
        base = sorted(
            (b for b in timings
             if (b.run, b.where, b.threads) == (t.run, t.where, t.threads)
             and b.precision == "fp32" and b.target != "pytorch"),
            key=lambda b: b.target != t.target,
        )  # fmt: skip
        if base:
            t.speedup = base[0].p50_ms / t.p50_ms


def _device_label(data: dict[str, Any]) -> str:
    """The device name, flagged when the bundle ran on another kind of machine (a host test)."""
    from edgevt.devices import list_profiles, load_profile

    device, machine = data["device"], data.get("host", {}).get("machine", "")
    if not isinstance(machine, str):
        raise ValueError(f"host machine {machine!r}")
    if data.get("emulated"):  # qemu on another machine: checks only, never a device timing
        return f"{device} (emulated {data['emulated']})"
    if device not in list_profiles() or not machine:
        return device

    def canonical(arch: str) -> str:
        return {"arm64": "aarch64", "amd64": "x86_64"}.get(arch.lower(), arch.lower())

    same = canonical(machine) == canonical(load_profile(device).arch)
    return device if same else f"{device} (ran on {machine})"


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def _flips(r: Row) -> str:
    if r.p_value is None or r.weights != "real":
        return "–"
    return f"{r.lost} / {r.won} (p={r.p_value:.2g})"


def accuracy_table(report: Report) -> list[list[str]]:
    header = ["run", "model", "weights", "artifact", "target", "precision", "top-1 %", "top-5 %",
              "Δ top-1 vs fp32", "lost / won (p)", "agreement", "cosine", "size MB",
              "images"]  # fmt: skip
    table = [header]
    for r in report.rows:
        fp32 = next(
            (x for x in report.rows if x.run == r.run and x.precision == "fp32" and x.top1), None
        )
        delta = None if r.top1 is None or fp32 is None else r.top1 - fp32.top1
        table.append([
            r.run, r.model, r.weights, r.artifact, r.target, r.precision,
            _fmt(r.top1, ".2f"), _fmt(r.top5, ".2f"), _fmt(delta, "+.2f"), _flips(r),
            _fmt(None if r.agreement is None else 100 * r.agreement, ".1f", " %"),
            _fmt(r.cosine, ".5f"), _fmt(r.size_mb, ".1f"), _fmt(r.n, "d"),
        ])  # fmt: skip
    return table


def checks_table(report: Report) -> list[list[str]]:
    head = ["where", "artifact", "precision", "backend", "threads", "cosine vs host",
            "top-1 agreement", "check"]  # fmt: skip
    return [head] + [
        [c["where"], c["artifact"], c["precision"], c["backend"], str(c["threads"]),
         _fmt(c["cosine"], ".6f"), _fmt(c["agreement"], ".2f"), "ok" if c["passed"] else "FAILED"]
        for c in report.checks
    ]  # fmt: skip


def device_accuracy_table(report: Report) -> list[list[str]]:
    head = ["where", "artifact", "precision", "backend", "images", "top-1 %", "host top-1 %",
            "top-5 %", "lost / won vs host (p)", ""]  # fmt: skip
    return [head] + [
        [a["where"], a["artifact"], a["precision"], a["backend"], str(a["n"]),
         _fmt(a["top1"], ".2f"), _fmt(a["host_top1"], ".2f"), _fmt(a["top5"], ".2f"),
         f"{a['lost']} / {a['won']} (p={_fmt(a['p_value'], '.2g')})",
         "gap beyond noise" if a["p_value"] is not None and a["p_value"] < 0.05 else ""]
        for a in report.device_accuracy
    ]  # fmt: skip


def latency_table(report: Report) -> list[list[str]]:
    table = [["run", "artifact", "precision", "where", "backend", "threads", "p50 ms", "p90 ms",
              "speed-up vs fp32"]]  # fmt: skip
    for t in sorted(report.timings, key=lambda t: (t.run, t.where, t.threads, t.artifact)):
        table.append([
            t.run, t.artifact, t.precision, t.where, t.backend, str(t.threads),
            f"{t.p50_ms:.2f}", f"{t.p90_ms:.2f}", _fmt(t.speedup, ".2f", "x"),
        ])  # fmt: skip
    return table


def plot_points(report: Report) -> list[dict[str, Any]]:
    """One point per artifact with both accuracy and a host latency (fewest threads timed)."""
    points = []
    for r in report.rows:
        host = [t for t in report.timings
                if (t.run, t.artifact, t.where) == (r.run, r.artifact, "host")]  # fmt: skip
        if not host or (r.top1 is None and r.cosine is None):
            continue
        t = min(host, key=lambda t: t.threads)
        # Real weights: top-1 against labels. Random weights: top-1 agreement with fp32.
        accuracy = (
            r.top1 if r.weights == "real" and r.top1 is not None else 100 * (r.agreement or 0)
        )
        points.append({"label": f"{r.model} {r.precision} ({r.target})", "latency": t.p50_ms,
                       "accuracy": accuracy, "threads": t.threads, "run": r.run,
                       "model": r.model})  # fmt: skip
    # One Pareto front per model: one model's top-1 is no trade-off against another's.
    return mark_pareto(points)


def mark_pareto(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set each point's ``pareto``: no other point of its model is both faster and more
    accurate."""
    for model in {p["model"] for p in points}:
        best = -math.inf
        mine = [p for p in points if p["model"] == model]
        for p in sorted(mine, key=lambda p: (p["latency"], -p["accuracy"])):
            p["pareto"] = p["accuracy"] > best
            best = max(best, p["accuracy"])
    return points


def recipe_points(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """An op-type profile's measured candidates (fp32, full int8, each type and each group
    in float) as
    cost-vs-cosine points with their Pareto front: the trade-off ``--optimize`` chooses on."""
    from edgevt.op_profile import OpProfile

    profile = OpProfile.from_dict(entry["profile"])
    return mark_pareto([
        {"label": v.label, "latency": v.ms[profile.base], "accuracy": v.cosine,
         "model": profile.model}
        for v in [profile.fp32, profile.full, *profile.types, *profile.groups]
    ])  # fmt: skip


def recipe_svg(entry: dict[str, Any]) -> str:
    p = entry["profile"]
    unit, base = p.get("unit", "ms"), max(p["threads"])
    return scatter_svg(recipe_points(entry), x_label=f"{unit} per inference at {base} "
                       f"thread(s) ({p['host']})", y_label="logit cosine to fp32",
                       y_pad=None, y_format=None, label="int8 recipe candidates")  # fmt: skip


def recipe_front(entry: dict[str, Any]) -> str:
    """The Markdown line naming the candidates' Pareto front, fastest first."""
    unit = entry["profile"].get("unit", "ms")
    front = sorted((q for q in recipe_points(entry) if q["pareto"]), key=lambda q: q["latency"])
    return "Pareto front of the measured candidates, cheapest first: " + "; ".join(
        f"{q['label']} ({q['latency']:.2f} {unit}, cosine {q['accuracy']:.4f})" for q in front
    ) + "."


def _decimals(step: float, least: int) -> int:
    """Decimals that tell ticks ``step`` apart (at least ``least``)."""
    return max(least, -math.floor(math.log10(step)) + 1) if step > 0 else least


def scatter_svg(
    points: list[dict[str, Any]], width: int = 720, height: int = 420,
    x_label: str = "host latency p50 (ms, batch 1)",
    y_label: str = "top-1 % (random weights: agreement with fp32 %)",
    y_pad: float | None = 1.0, y_format: str | None = ".1f", label: str = "accuracy vs latency",
) -> str:
    """Accuracy vs latency, Pareto front joined by a line; an inline, dependency-free SVG.
    ``y_pad`` None: a tenth of the accuracy span (cosines); ``y_format`` None: as many
    decimals as the ticks need."""
    if not points:
        return "<p><em>No artifact has both an evaluation and a host benchmark yet.</em></p>"
    left, right, top, bottom = 70, 20, 20, 50
    xs = [p["latency"] for p in points]
    ys = [p["accuracy"] for p in points]
    x0, x1 = 0.0, max(xs) * 1.1
    pad = y_pad if y_pad is not None else max(1e-4, 0.1 * (max(ys) - min(ys)))
    y0, y1 = min(ys) - pad, max(ys) + pad

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(label)}">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" '
        'stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#333"/>',
    ]
    x_format = f".{_decimals((x1 - x0) / 5, 1)}f"
    y_format = y_format or f".{_decimals((y1 - y0) / 5, 1)}f"
    for i in range(6):
        xv, yv = x0 + (x1 - x0) * i / 5, y0 + (y1 - y0) * i / 5
        parts.append(f'<text x="{sx(xv):.1f}" y="{height - bottom + 16}" font-size="11" '
                     f'text-anchor="middle">{xv:{x_format}}</text>')  # fmt: skip
        parts.append(f'<text x="{left - 6}" y="{sy(yv) + 4:.1f}" font-size="11" '
                     f'text-anchor="end">{yv:{y_format}}</text>')  # fmt: skip
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 12}" font-size="12" '
                 f'text-anchor="middle">{html.escape(x_label)}</text>')  # fmt: skip
    parts.append(f'<text x="16" y="{(top + height - bottom) / 2}" font-size="12" '
                 f'text-anchor="middle" transform="rotate(-90 16 {(top + height - bottom) / 2})">'
                 f"{html.escape(y_label)}</text>")  # fmt: skip
    for model in sorted({p["model"] for p in points}):
        front = sorted((p for p in points if p["pareto"] and p["model"] == model),
                       key=lambda p: p["latency"])  # fmt: skip
        if len(front) > 1:
            path = " ".join(f"{sx(p['latency']):.1f},{sy(p['accuracy']):.1f}" for p in front)
            parts.append(f'<polyline points="{path}" fill="none" stroke="#d62728" '
                         'stroke-width="2" stroke-dasharray="6 3"/>')  # fmt: skip
    for p in sorted(points, key=lambda p: p["pareto"]):  # the front on top where points overlap
        color = "#d62728" if p["pareto"] else "#1f77b4"
        parts.append(
            f'<circle cx="{sx(p["latency"]):.1f}" cy="{sy(p["accuracy"]):.1f}" r="7" '
            f'fill="{color}"><title>{html.escape(p["label"])}</title></circle>'
        )
        right_half = sx(p["latency"]) > (left + width - right) / 2
        anchor, dx = ("end", -10) if right_half else ("start", 10)  # keep labels on the canvas
        parts.append(
            f'<text x="{sx(p["latency"]) + dx:.1f}" y="{sy(p["accuracy"]) - 8:.1f}" '
            f'font-size="11" text-anchor="{anchor}">{html.escape(p["label"])}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def sensitivity_svg(sensitivity: dict[str, Any], top: int = 15, width: int = 640) -> str:
    ranking = sensitivity.get("ranking", [])[:top]
    if not ranking:
        return ""
    kept = set(sensitivity.get("kept_float", []))
    bar_h, label_w = 18, 300
    height = bar_h * len(ranking) + 20
    peak = max(r["kl"] for r in ranking) or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="per-layer sensitivity">']  # fmt: skip
    for i, r in enumerate(ranking):
        y = 10 + i * bar_h
        w = (width - label_w - 80) * r["kl"] / peak
        color = "#d62728" if r["op"] in kept else "#1f77b4"
        parts.append(f'<text x="{label_w - 6}" y="{y + 12}" font-size="11" text-anchor="end">'
                     f'{html.escape(r["op"])}</text>')  # fmt: skip
        parts.append(f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{bar_h - 5}" '
                     f'fill="{color}"/>')  # fmt: skip
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 12}" font-size="10">'
                     f'{r["kl"]:.2g}</text>')  # fmt: skip
    parts.append("</svg>")
    return "\n".join(parts)


def _markdown_table(table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    return "\n".join(lines)


def _html_table(table: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table[1:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _calibration_lines(report: Report) -> list[str]:
    lines = []
    for c in report.calibration:
        extra = f", percentile {c['percentile']}" if c.get("percentile") else ""
        ops = c["float_ops"]
        floats = ", ".join(ops[:6]) + (f" and {len(ops) - 6} more" if len(ops) > 6 else "")
        lines.append(
            f"{c['run']}: {c['method']} on {c['images']} images from {c['data']}{extra}; "
            f"kept in float: {floats or 'none'}"
        )
    return lines


def _target_notes(report: Report) -> str:
    """What the targets of these rows say about their host timings (a stand-in runtime...)."""
    from edgevt.targets import all_targets

    targets = all_targets()
    notes = {targets[r.target].report_note(r.precision) for r in report.rows if r.target in targets}
    return " ".join(sorted(n for n in notes if n))


def _link(page: Path, out: Path) -> str:
    return Path(os.path.relpath(page.resolve(), out.resolve())).as_posix()


def _debug_html(debug: list[dict[str, Any]], out: Path) -> str:
    if not debug:
        return ""
    table = [["run", "file", "target", "images", "faithful", "departures", "drifted",
              "logits SQNR dB"]]  # fmt: skip
    table += [[d["run"], d["file"], d["target"], str(d["images"]), f"{d['faithful']:.1f} %",
               str(d["departures"]), str(d["drifted"]), _fmt(d["sqnr_db"], ".1f")]
              for d in debug]  # fmt: skip
    links = "".join(
        f'<li><a href="{html.escape(_link(d["page"], out))}">{html.escape(d["run"])} '
        f"{html.escape(d['file'])}</a></li>"
        for d in debug
        if d["page"]
    )
    return (f"<h2>int8 debug (edgevt debug)</h2>{_html_table(table)}"
            f"<ul>{links}</ul>")  # fmt: skip


def _leaderboard(report: Report) -> tuple[list[list[str]], str]:
    if not report.leaderboard:
        return [], ""
    from edgevt.leaderboard import leaderboard_table

    note = (
        "Per model, place and thread count: the fastest timed file whose top-1 is within "
        f"{report.leaderboard_budget:g} pt of the model's fp32 PyTorch top-1 (on a device, its "
        "on-device top-1 where the bundle measured one)."
    )
    return leaderboard_table(report.leaderboard), note


def write_report(report: Report, out: Path, title: str) -> dict[str, Path]:
    """``out/report.md``, ``out/report.html`` and ``out/report.json``, each written atomically."""
    accuracy, latency = accuracy_table(report), latency_table(report)
    points = plot_points(report)
    scatter = scatter_svg(points)
    calib = _calibration_lines(report)
    flips_note = (
        "lost / won: images the fp32 PyTorch model gets right and the artifact wrong, and the "
        "reverse; p is McNemar's exact test of that split. p >= 0.05: the top-1 difference is "
        "within the noise of this many images."
        if any(r.p_value is not None and r.weights == "real" for r in report.rows)
        else ""
    )
    random_note = (
        "Rows with random weights: accuracy against labels is meaningless; agreement and cosine "
        "(vs the fp32 PyTorch model) are the measure."
        if any(r.weights == "random" for r in report.rows)
        else ""
    )
    trt_note = _target_notes(report)
    board, board_note = _leaderboard(report)
    md = [f"# {title}", ""]
    if board:
        md += ["## Leaderboard", "", board_note, "", _markdown_table(board), ""]
    md += ["## Accuracy", "", _markdown_table(accuracy), "", flips_note, "",
          random_note, "",
          "## Latency", "", _markdown_table(latency), "", trt_note, "",
          "## Accuracy vs latency", "", "See `report.html` for the plot; points:", ""]  # fmt: skip
    md += [f"- {p['label']}: {p['latency']:.2f} ms, {p['accuracy']:.2f} %"
           + (" (Pareto front)" if p["pareto"] else "") for p in points]  # fmt: skip
    on_device = device_accuracy_table(report) if report.device_accuracy else []
    if on_device:
        md += ["", "## Accuracy on devices", "", "Each file on the device, on the bundle's "
               "labelled images, against the same file on this host image by image (McNemar's "
               "exact p; below 0.05 the device's answers differ beyond noise).", "",
               _markdown_table(on_device)]  # fmt: skip
    checks = checks_table(report) if report.checks else []
    if checks:
        md += ["", "## Checks on devices", "", "Each bundled file's logits on the device (or "
               "an emulator of it) against this host's, on the bundle's sample images.", "",
               _markdown_table(checks)]  # fmt: skip
    for entry in report.profiles:
        md += ["", f"## int8 op-type profile ({entry['run']})", "", _profile_caption(entry), "",
               _markdown_table(profile_table(entry)), "", recipe_front(entry)]  # fmt: skip
    if report.instructions:
        md += ["", "## ARM instruction counts (emulated)", "", INSTRUCTIONS_NOTE, "",
               _markdown_table(instructions_table(report))]  # fmt: skip
    md += ["", "## Calibration", ""] + [f"- {line}" for line in calib or ["no int8 in these runs"]]
    for run, sens in report.sensitivity.items():
        md += ["", f"## Sensitivity ({run})", "",
               f"Kept in float: {', '.join(sens.get('kept_float', [])) or 'none'}; "
               f"{sens.get('measure', '')}: all int8 {sens.get('drop_all_int8')}, "
               f"chosen {sens.get('drop_chosen')}."]  # fmt: skip
    if report.debug:
        md += ["", "## int8 debug (`edgevt debug`)", ""]
        md += [f"- {d['run']} `{d['file']}` ({d['target']}, {d['images']} images): "
               f"{d['faithful']:.1f} % of tensors faithful to the simulation, "
               f"{d['departures']} departures, {d['drifted']} drifted; logits SQNR "
               f"{_fmt(d['sqnr_db'], '.1f', ' dB')}"
               + (f" ([page]({_link(d['page'], out)}))" if d["page"] else "")
               for d in report.debug]  # fmt: skip
    sens_html = "".join(
        f"<h2>Per-layer sensitivity ({html.escape(run)})</h2>"
        "<p>KL divergence of the logits when only that op is int8; red: kept in float.</p>"
        + sensitivity_svg(sens)
        for run, sens in report.sensitivity.items()
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th {{ background: #f2f2f2; }}
td:nth-child(-n+4) {{ text-align: left; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{f"<h2>Leaderboard</h2><p>{html.escape(board_note)}</p>" + _html_table(board) if board else ""}
<h2>Accuracy vs latency</h2>
<figure id="pareto">{scatter}
<figcaption>One point per artifact (host, fewest threads timed); red: on its model's Pareto
front (no other artifact of that model is both faster and more accurate).
</figcaption></figure>
<h2>Accuracy</h2>{_html_table(accuracy)}<p>{html.escape(flips_note)}</p><p>{html.escape(random_note)}</p>
<h2>Latency</h2>{_html_table(latency)}<p>{html.escape(trt_note)}</p>
{"<h2>Accuracy on devices</h2>" + _html_table(on_device) if on_device else ""}
{"<h2>Checks on devices</h2>" + _html_table(checks) if checks else ""}
{"".join(f"<h2>int8 op-type profile ({html.escape(e['run'])})</h2><p>"
         f"{html.escape(_profile_caption(e))}</p>" + _html_table(profile_table(e))
         + f'<figure class="recipes">{recipe_svg(e)}<figcaption>'
         + html.escape(RECIPES_NOTE + " " + recipe_front(e)) + "</figcaption></figure>"
         for e in report.profiles)}
{"<h2>ARM instruction counts (emulated)</h2><p>" + html.escape(INSTRUCTIONS_NOTE) + "</p>"
 + _html_table(instructions_table(report)) if report.instructions else ""}
<h2>Calibration</h2><ul>{
        "".join(f"<li>{html.escape(c)}</li>" for c in calib) or "<li>no int8 in these runs</li>"
    }</ul>
{_debug_html(report.debug, out)}
{sens_html}
</body></html>
"""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out / "report.md",
        "html": out / "report.html",
        "json": out / "report.json",
    }
    for path in paths.values():  # all three or none
        if path.is_dir():
            raise EdgevtError(f"{path} is a folder, not a file; remove it or choose another -o.")
    data = {"rows": [asdict(r) for r in report.rows],
            "timings": [asdict(t) for t in report.timings],
            "points": points, "calibration": report.calibration,
            "checks": report.checks, "device_accuracy": report.device_accuracy,
            "profiles": report.profiles, "leaderboard": report.leaderboard,
            "instructions": report.instructions}  # fmt: skip
    texts = {"markdown": "\n".join(md) + "\n", "html": page,
             "json": json.dumps(data, indent=2) + "\n"}  # fmt: skip
    with contextlib.ExitStack() as stack:  # all three whole, or none replaced
        temps = {k: stack.enter_context(atomic_path(paths[k])) for k in paths}
        for key, tmp in temps.items():
            tmp.write_text(texts[key])
    return paths
