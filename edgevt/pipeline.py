"""`edgevt run CONFIG.toml`: calibrate → export every target → eval → bench → bundles → report.

One run directory holds it all (``<out>/calib/``, ``<out>/<target>[-int8]/``, ``<out>/bundles/``)
and ``<out>/pipeline.json`` records each finished stage with a key: the hash of everything
that stage depends on (its config section, the checkpoint's SHA-256, the keys of the stages it
reads). A stage whose key is unchanged and whose outputs exist is skipped, so editing the bench
settings re-times without re-exporting, and a run killed half-way resumes at the first stage
that had not finished (stages record themselves only when done; artifacts are atomic).

Relative paths in the config are relative to the config file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgevt.errors import EdgevtError
from edgevt.io import read_toml, sha256, write_json
from edgevt.targets import artifact_name, get_target, needs_calibration, resolve_precisions

STATE = "pipeline.json"
SECTIONS = {"out", "model", "calibration", "export", "eval", "bench", "devices", "report"}


@dataclass
class PipelineOutcome:
    out: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    report: Path | None = None


def load_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    config = read_toml(path, "pipeline config")
    unknown = set(config) - SECTIONS
    if unknown:
        raise EdgevtError(
            f"{path}: unknown section(s) {sorted(unknown)}; known: {sorted(SECTIONS)}."
        )
    if "name" not in config.get("model", {}):
        raise EdgevtError(f'{path}: [model] needs name = "levit_128s" (see `edgevt models`).')
    if not config.get("export"):
        raise EdgevtError(f'{path}: add at least one [[export]] with target = "onnx".')
    base = path.resolve().parent

    def resolve(value: str | None) -> str | None:
        return None if value is None else str((base / value).resolve())

    model = config["model"]
    model["checkpoint"] = resolve(model.get("checkpoint"))
    config["out"] = resolve(config.get("out", f"runs/{model['name']}"))
    for section in ("calibration", "eval"):
        if "data" in config.get(section, {}):
            config[section]["data"] = resolve(config[section]["data"])
    if "out" in config.get("report", {}):
        config["report"]["out"] = resolve(config["report"]["out"])
    for export in config["export"]:  # an unknown target or precision fails before any work
        target = get_target(export.get("target", "onnx"))
        resolve_precisions(target, list(export.get("precisions", [])), bool(export.get("int8")))
    calibration = config.get("calibration", {})
    if any(_wants_int8(e) for e in config["export"]) and "data" not in calibration:
        raise EdgevtError(f"{path}: int8 exports need [calibration] data = IMAGE_DIR.")
    return config


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _State:
    def __init__(self, out: Path) -> None:
        self.path = out / STATE
        self.stages: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            self.stages = json.loads(self.path.read_text()).get("stages", {})

    def fresh(self, stage: str, key: str, outputs: list[Path]) -> bool:
        return self.stages.get(stage, {}).get("key") == key and all(p.exists() for p in outputs)

    def done(self, stage: str, key: str, outputs: list[Path]) -> None:
        self.stages[stage] = {"key": key, "outputs": [str(p) for p in outputs]}
        write_json(self.path, {"format": "edgevt.pipeline/1", "stages": self.stages})


def run_pipeline(
    config_path: str | Path, force: bool = False, log: Callable[[str], None] = print
) -> PipelineOutcome:
    from edgevt import api
    from edgevt.bench import result_name
    from edgevt.bundle import make_bundle
    from edgevt.report import collect, write_report

    config = load_config(config_path)
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    state = _State(out)
    outcome = PipelineOutcome(out)
    model = config["model"]
    weights = sha256(Path(model["checkpoint"])) if model.get("checkpoint") else None
    model_key = _key(model, weights)

    def stage(name: str, key: str, outputs: list[Path], work: Callable[[], None]) -> None:
        if not force and state.fresh(name, key, outputs):
            log(f"[skip] {name}: inputs unchanged")
            outcome.skipped.append(name)
            return
        log(f"[run]  {name}")
        work()
        state.done(name, key, outputs)
        outcome.ran.append(name)

    common = {
        "checkpoint": model.get("checkpoint"),
        "pretrained": bool(model.get("pretrained", False)),
        "seed": int(model.get("seed", 0)),
    }
    calib = config.get("calibration", {})
    table = out / "calib" / "calibration.json"
    calib_key = _key(model_key, calib)
    if any(_wants_int8(e) for e in config["export"]):
        stage("calibrate", calib_key, [table], lambda: api.calibrate(
            model["name"], data=calib["data"], calib_size=int(calib.get("size", 512)),
            method=calib.get("method", "percentile"), out=table, **common,
        ))  # fmt: skip

    evaluation = config.get("eval", {})
    run_dirs = []
    for spec in config["export"]:
        target = get_target(spec.get("target", "onnx"))
        precisions = resolve_precisions(
            target, list(spec.get("precisions", [])), bool(spec.get("int8", False))
        )
        int8 = needs_calibration(precisions)
        run_dir = out / (f"{target.name}-int8" if int8 else target.name)
        run_dirs.append(run_dir)
        key = _key(model_key, spec, evaluation, calib_key if int8 else None)
        outputs = [run_dir / artifact_name(target, p) for p in precisions]
        stage(f"export {run_dir.name}", key, outputs, lambda spec=spec, run_dir=run_dir, int8=int8,
              precisions=precisions: api.export(
                  model["name"], spec.get("target", "onnx"), out=run_dir, int8=int8,
                  precisions=precisions[1:],
                  calib_table=table if int8 else None, eval_data=evaluation.get("data"),
                  limit=evaluation.get("limit"), max_drop=spec.get("max_drop"),
                  calib=calib.get("data") if spec.get("max_drop") is not None else None,
                  **common,
              ))  # fmt: skip
        bench = config.get("bench")
        if bench is not None:
            artifacts = outputs
            threads = [int(t) for t in bench.get("threads", [1])]
            results = [run_dir / "bench" / result_name(a, t, 1) for a in artifacts
                       for t in threads]  # fmt: skip
            stage(f"bench {run_dir.name}", _key(key, bench), results, lambda artifacts=artifacts,
                  threads=threads, bench=bench: api.bench(
                      artifacts, threads=threads, seconds=float(bench.get("seconds", 3.0)),
                      iterations=int(bench.get("iterations", 20)),
                  ))  # fmt: skip

    device_results: list[Path] = []
    for device in config.get("devices", []):
        source = out / device.get("run", run_dirs[0].name)
        folder = out / "bundles" / device["name"]
        key = _key(state.stages.get(f"export {source.name}", {}).get("key"), device)
        stage(f"bundle {device['name']}", key, [folder / "bundle.json"], lambda device=device,
              source=source, folder=folder: make_bundle(
                  source, device["name"], folder, samples=int(device.get("samples", 8)),
                  force=True,
              ))  # fmt: skip
        device_results += sorted((folder / "results").glob("*.json"))

    report_dir = Path(config.get("report", {}).get("out", out / "report"))
    log("[run]  report")
    report = collect([d for d in run_dirs if (d / "manifest.json").is_file()], device_results)
    title = config.get("report", {}).get("title", f"edgevt run: {model['name']}")
    outcome.report = write_report(report, report_dir, title)["html"]
    return outcome


def _wants_int8(export: dict[str, Any]) -> bool:
    return bool(export.get("int8")) or needs_calibration(export.get("precisions", []))
