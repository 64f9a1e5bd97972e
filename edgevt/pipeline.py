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
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgevt.data.imagenet import open_dataset
from edgevt.errors import EdgevtError
from edgevt.io import read_toml, sha256, write_json
from edgevt.models import resolve_checkpoint
from edgevt.quant.config import QuantConfig
from edgevt.run import run_lock
from edgevt.targets import DEFAULT_TARGET, artifact_name, get_target

STATE = "pipeline.json"
# Every key a section takes, with its type; a typo (``max_dorp``) is an error naming the key.
# An [[export]] also takes its target's own options (``edgevt targets``), typed by the target.
KEYS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "model": {"name": str, "checkpoint": str, "pretrained": bool, "seed": int},
    "calibration": {"data": str, "size": int, "method": str},
    "export": {"target": str, "int8": bool, "precisions": list, "max_drop": (int, float),
               "quant_config": str},
    "eval": {"data": str, "limit": int, "workers": int},
    "bench": {"threads": list, "seconds": (int, float), "iterations": int},
    "devices": {"name": str, "run": str, "samples": int},
    "report": {"out": str, "title": str},
}  # fmt: skip
SECTIONS = {"out", *KEYS}
POSITIVE = {"calibration": ("size",), "eval": ("limit", "workers"),
            "bench": ("seconds", "iterations"), "devices": ("samples",)}  # fmt: skip
NOT_NEGATIVE = {"model": ("seed",), "export": ("max_drop",)}


@dataclass
class PipelineOutcome:
    out: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    report: Path | None = None


def load_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    config = read_toml(path, "pipeline config")
    if "sweep" in config:
        raise EdgevtError(f"{path} is a sweep file: run it with `edgevt sweep {path}`.")
    for name in config:
        if name not in SECTIONS:
            raise EdgevtError(
                f"{path}: [{name}]: unknown section{did_you_mean(name, SECTIONS)} Known: "
                f"{', '.join(sorted(SECTIONS))}."
            )
    _check_types(path, config)
    if "name" not in config.get("model", {}):
        raise EdgevtError(f'{path}: [model] needs name = "levit_128s" (see `edgevt models`).')
    if not config.get("export"):
        raise EdgevtError(f'{path}: add at least one [[export]] with target = "{DEFAULT_TARGET}".')
    base = path.resolve().parent

    def resolve(value: str | None) -> str | None:
        return None if value is None else str((base / value).resolve())

    model = config["model"]
    model["checkpoint"] = resolve(model.get("checkpoint"))
    try:  # an unknown model, a missing checkpoint, or pretrained where none is installable
        resolve_checkpoint(model["name"], model["checkpoint"], bool(model.get("pretrained")))
    except EdgevtError as exc:
        raise EdgevtError(f"{path}: [model]: {exc}") from None
    config["out"] = resolve(config.get("out", f"runs/{model['name']}"))
    for section in ("calibration", "eval"):
        if "data" in config.get(section, {}):
            config[section]["data"] = resolve(config[section]["data"])
            if not Path(config[section]["data"]).is_dir():
                raise EdgevtError(
                    f"{path}: [{section}].data {config[section]['data']} does not exist or is "
                    "not a folder of images — paths are relative to the config file's folder."
                )
    if "out" in config.get("report", {}):
        config["report"]["out"] = resolve(config["report"]["out"])
    for export in config["export"]:  # an unknown target, precision or option fails now
        target = get_target(export.get("target", DEFAULT_TARGET))
        precisions = target.resolve_precisions(export.get("precisions", []), export.get("int8"))
        try:
            options = target.options(_target_options(export))
        except EdgevtError as exc:
            raise EdgevtError(f"{path}: [[export]] target {target.spec.name}: {exc}") from None
        target.validate(options, precisions, export.get("max_drop"))
        max_drop = export.get("max_drop")
        if max_drop is not None and not 0 <= max_drop <= 100:
            raise EdgevtError(f"{path}: [[export]] max_drop {max_drop}: give 0 to 100 points.")
        if "quant_config" in export:
            export["quant_config"] = resolve(export["quant_config"])
            if not Path(export["quant_config"]).is_file():
                raise EdgevtError(
                    f"{path}: [[export]] quant_config {export['quant_config']} does not exist — "
                    "paths are relative to the config file's folder."
                )
            try:  # a damaged config fails now, not after calibrating
                QuantConfig.load(export["quant_config"])
            except EdgevtError as exc:
                raise EdgevtError(f"{path}: [[export]] quant_config: {exc}") from None
    if "data" in config.get("eval", {}):  # unlabelled evaluation images fail now
        try:
            open_dataset(config["eval"]["data"])
        except EdgevtError as exc:
            raise EdgevtError(f"{path}: [eval].data: {exc}") from None
    report_out = config.get("report", {}).get("out")
    if report_out is not None and Path(report_out).exists() and not Path(report_out).is_dir():
        raise EdgevtError(f"{path}: [report].out {report_out} is a file; choose a folder.")
    _check_bench_and_devices(path, config)
    calibration = config.get("calibration", {})
    from edgevt.quant.observers import METHODS

    if calibration.get("method", "percentile") not in METHODS:
        raise EdgevtError(
            f"{path}: [calibration].method {calibration['method']!r}: choose one of "
            f"{', '.join(METHODS)}."
        )
    if any(_wants_int8(e) for e in config["export"]) and "data" not in calibration:
        raise EdgevtError(f"{path}: int8 exports need [calibration] data = IMAGE_DIR.")
    return config


def _check_types(
    path: Path,
    config: dict[str, Any],
    sections: dict[str, dict[str, type | tuple[type, ...]]] = KEYS,
    arrays: tuple[str, ...] = ("export", "devices"),
) -> None:
    """Unknown keys and values of the wrong type, named by their path in the file
    (``[[export]][1].max_dorp: unknown key; did you mean max_drop?``). ``arrays``: the
    sections written as [[arrays of tables]]."""
    for section, keys in sections.items():
        plural = section in arrays
        value = config.get(section, [] if plural else {})
        tables = value if isinstance(value, list) else [value]
        if not all(isinstance(t, dict) for t in tables) or isinstance(value, list) != plural:
            form = f"[[{section}]] tables" if plural else f"a [{section}] table"
            raise EdgevtError(f"{path}: {section} must be written as {form}.")
        for i, table in enumerate(tables):
            where = f"[[{section}]][{i}]" if plural else f"[{section}]"
            known = set(keys) | (_option_names() if section == "export" else set())
            for key in table:
                if key not in known:
                    raise EdgevtError(
                        f"{path}: {where}.{key}: unknown key{did_you_mean(key, known)} Known: "
                        f"{', '.join(sorted(keys))}"
                        + (" and the target's options (`edgevt targets`)." if section == "export"
                           else ".")
                    )  # fmt: skip
            for key, kind in keys.items():
                if key in table and not _is_a(table[key], kind):
                    raise EdgevtError(
                        f"{path}: {where}.{key} = {table[key]!r}: expected {_type_name(kind)}."
                    )
                value = table.get(key)
                if isinstance(value, float) and not math.isfinite(value):
                    raise EdgevtError(f"{path}: {where}.{key} = {value!r}: must be finite.")
                if key in POSITIVE.get(section, ()) and key in table and not value > 0:
                    raise EdgevtError(f"{path}: {where}.{key} = {value!r}: must be above 0.")
                if key in NOT_NEGATIVE.get(section, ()) and key in table and value < 0:
                    raise EdgevtError(f"{path}: {where}.{key} = {value!r}: must be 0 or more.")
    if "out" in config and (not isinstance(config["out"], str) or not config["out"].strip()):
        raise EdgevtError(f"{path}: out must be a path (a non-empty string).")


def _check_bench_and_devices(path: Path, config: dict[str, Any]) -> None:
    """Thread counts, device profiles and the runs they bundle: wrong ones fail before work."""
    from edgevt.devices import load_profile

    threads = config.get("bench", {}).get("threads", [1])
    if not threads or not all(_is_a(t, int) and t >= 1 for t in threads):
        raise EdgevtError(f"{path}: [bench].threads = {threads!r}: expected integers >= 1.")
    names = [_run_name(e) for e in config["export"]]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise EdgevtError(
            f"{path}: two [[export]] tables write the same run directory {twice[0]} (same target "
            "and int8 setting); merge them (precisions = [...]) or drop one."
        )
    runs = set(names)
    for i, device in enumerate(config.get("devices", [])):
        where = f"{path}: [[devices]][{i}]"
        if "name" not in device:
            raise EdgevtError(f'{where}: needs name = "raspberry-pi-5" (see `edgevt devices`).')
        try:
            load_profile(device["name"])
        except EdgevtError as exc:
            raise EdgevtError(f"{where}.name: {exc}") from None
        if "run" in device and device["run"] not in runs:
            raise EdgevtError(
                f"{where}.run = {device['run']!r}: no [[export]] writes that run"
                f"{did_you_mean(device['run'], runs)} The exports write {', '.join(sorted(runs))}."
            )


def _run_name(export: dict[str, Any]) -> str:
    """The run directory (under ``out``) that an [[export]] writes."""
    name = get_target(export.get("target", DEFAULT_TARGET)).spec.name
    return f"{name}-int8" if _wants_int8(export) else name


def did_you_mean(word: str, choices: set[str]) -> str:
    """``; did you mean max_drop?`` for a near miss, else ``.`` (ends the sentence)."""
    import difflib

    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else "."


def _is_a(value: Any, kind: type | tuple[type, ...]) -> bool:
    # TOML's true is an int to isinstance: a bool only where a bool is asked for
    return isinstance(value, kind) and isinstance(value, bool) == (kind is bool)


_NAMES = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
          "list": "a list"}  # fmt: skip


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_NAMES[k.__name__] for k in kinds)


def _option_names() -> set[str]:
    """Every option some target takes: the export's own target then says whether it applies."""
    import dataclasses

    from edgevt.targets import all_targets

    return {f.name for t in all_targets().values() for f in dataclasses.fields(t.Options)}


def _target_options(export: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in export.items() if k not in KEYS["export"]}


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_state(path: Path) -> dict[str, dict[str, Any]]:
    """The stages a pipeline finished; a damaged record means none (they run again)."""
    try:
        stages = json.loads(path.read_text()).get("stages", {})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise EdgevtError(
            f"{path} (what `edgevt run` finished) is damaged ({type(exc).__name__}); remove it "
            "and every stage runs again."
        ) from None
    if not isinstance(stages, dict) or not all(isinstance(v, dict) for v in stages.values()):
        raise EdgevtError(
            f"{path} (what `edgevt run` finished) is damaged (stages are not records); remove "
            "it and every stage runs again."
        )
    return stages


class _State:
    def __init__(self, out: Path) -> None:
        self.path = out / STATE
        self.stages: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            self.stages = _read_state(self.path)

    def fresh(self, stage: str, key: str, outputs: list[Path]) -> bool:
        return self.stages.get(stage, {}).get("key") == key and all(p.exists() for p in outputs)

    def done(self, stage: str, key: str, outputs: list[Path]) -> None:
        self.stages[stage] = {"key": key, "outputs": [str(p) for p in outputs]}
        write_json(self.path, {"format": "edgevt.pipeline/1", "stages": self.stages})


class _Recorder(_State):
    """A copy of another process's state: decides what is fresh the same way, and keeps what
    finished for that process to record (a sweep's cells run as tasks; one driver writes
    pipeline.json)."""

    def __init__(self, stages: dict[str, dict[str, Any]]) -> None:
        self.stages = dict(stages)
        self.finished: list[tuple[str, str, list[Path]]] = []

    def done(self, stage: str, key: str, outputs: list[Path]) -> None:
        self.stages[stage] = {"key": key, "outputs": [str(p) for p in outputs]}
        self.finished.append((stage, key, outputs))


class _Stages:
    """Runs a stage unless its key is unchanged and its outputs exist (then skips it)."""

    def __init__(
        self, out: Path, force: bool, log: Callable[[str], None], state: _State | None = None
    ) -> None:
        self.state, self.force, self.log = state or _State(out), force, log
        self.outcome = PipelineOutcome(out)

    def __call__(self, name: str, key: str, outputs: list[Path], work: Callable[[], None]):
        if not self.force and self.state.fresh(name, key, outputs):
            self.log(f"[skip] {name}: inputs unchanged")
            self.outcome.skipped.append(name)
            return
        self.log(f"[run]  {name}")
        work()
        self.state.done(name, key, outputs)
        self.outcome.ran.append(name)


def run_pipeline(
    config_path: str | Path, force: bool = False, log: Callable[[str], None] = print
) -> PipelineOutcome:
    config = load_config(config_path)
    out = Path(config["out"])
    if out.exists() and not out.is_dir():
        raise EdgevtError(f"{config_path}: out = {str(out)!r} is a file — choose a folder.")
    with run_lock(out):  # a second `edgevt run` of the same config is refused, not interleaved
        return _run_stages(config, out, force, log)


def _run_stages(
    config: dict[str, Any], out: Path, force: bool, log: Callable[[str], None]
) -> PipelineOutcome:
    from edgevt.report import collect, write_report

    stage = _Stages(out, force, log)
    model = config["model"]
    model_key = _model_key(config)
    calib_key = _calibrate(config, stage, model_key)
    run_dirs = [_export(config, spec, stage, model_key, calib_key) for spec in config["export"]]
    device_results = _bundles(config, stage, run_dirs)
    report_dir = Path(config.get("report", {}).get("out", out / "report"))
    log("[run]  report")
    report = collect([d for d in run_dirs if (d / "manifest.json").is_file()], device_results)
    title = config.get("report", {}).get("title", f"edgevt run: {model['name']}")
    stage.outcome.report = write_report(report, report_dir, title)["html"]
    return stage.outcome


def _model_key(config: dict[str, Any]) -> str:
    """What every stage depends on: the [model] section and its checkpoint's bytes."""
    model = config["model"]
    weights = sha256(Path(model["checkpoint"])) if model.get("checkpoint") else None
    return _key(model, weights)


def _common(config: dict[str, Any]) -> dict[str, Any]:
    model = config["model"]
    return {
        "checkpoint": model.get("checkpoint"),
        "pretrained": bool(model.get("pretrained", False)),
        "seed": int(model.get("seed", 0)),
    }


def _calibrate(config: dict[str, Any], stage: _Stages, model_key: str) -> str:
    """One table for every int8 export; returns its stage key."""
    from edgevt import api

    calib = config.get("calibration", {})
    table = Path(config["out"]) / "calib" / "calibration.json"
    calib_key = _key(model_key, calib)
    if any(_wants_int8(e) for e in config["export"]):
        stage("calibrate", calib_key, [table], lambda: api.calibrate(
            config["model"]["name"], data=calib["data"], calib_size=int(calib.get("size", 512)),
            method=calib.get("method", "percentile"), out=table, **_common(config),
        ))  # fmt: skip
    return calib_key


def _export(
    config: dict[str, Any], spec: dict[str, Any], stage: _Stages, model_key: str, calib_key: str
) -> Path:
    """One [[export]] (and its bench): the run directory it writes."""
    from edgevt import api
    from edgevt.bench import result_name

    out, calib = Path(config["out"]), config.get("calibration", {})
    evaluation = config.get("eval", {})
    target = get_target(spec.get("target", DEFAULT_TARGET))
    precisions = target.resolve_precisions(spec.get("precisions", []), spec.get("int8"))
    int8 = target.spec.int8_precision in precisions
    run_dir = out / _run_name(spec)
    # how many processes evaluate changes no score: not part of the key
    scored = {k: v for k, v in evaluation.items() if k != "workers"}
    key = _key(model_key, spec, scored, calib_key if int8 else None)
    outputs = [run_dir / artifact_name(target.spec, p) for p in precisions]
    stage(f"export {run_dir.name}", key, outputs, lambda: api.export(
        config["model"]["name"], target.spec.name, out=run_dir, int8=int8,
        precisions=precisions[1:], calib_table=out / "calib" / "calibration.json" if int8 else None,
        eval_data=evaluation.get("data"), limit=evaluation.get("limit"),
        eval_workers=int(evaluation.get("workers", 1)),
        max_drop=spec.get("max_drop"),
        calib=calib.get("data") if spec.get("max_drop") is not None else None,
        quant_config=spec.get("quant_config"), options=_target_options(spec), **_common(config),
    ))  # fmt: skip
    bench = config.get("bench")
    if bench is not None:
        threads = [int(t) for t in bench.get("threads", [1])]
        results = [run_dir / "bench" / result_name(a, t, 1) for a in outputs for t in threads]
        stage(f"bench {run_dir.name}", _key(key, bench), results, lambda: api.bench(
            outputs, threads=threads, seconds=float(bench.get("seconds", 3.0)),
            iterations=int(bench.get("iterations", 20)),
        ))  # fmt: skip
    return run_dir


def _bundles(config: dict[str, Any], stage: _Stages, run_dirs: list[Path]) -> list[Path]:
    """A bundle per [[devices]] entry; the results any of them brought back."""
    from edgevt.bundle import make_bundle

    out, found = Path(config["out"]), []
    for device in config.get("devices", []):
        source = out / device.get("run", run_dirs[0].name)
        folder = out / "bundles" / device["name"]
        key = _key(stage.state.stages.get(f"export {source.name}", {}).get("key"), device)
        stage(f"bundle {device['name']}", key, [folder / "bundle.json"], lambda device=device,
              source=source, folder=folder: make_bundle(
                  source, device["name"], folder, samples=int(device.get("samples", 8)),
                  force=True,
              ))  # fmt: skip
        found += sorted((folder / "results").glob("*.json"))
    return found


def _wants_int8(export: dict[str, Any]) -> bool:
    target = get_target(export.get("target", DEFAULT_TARGET))
    return target.spec.int8_precision in target.resolve_precisions(
        export.get("precisions", []), export.get("int8")
    )
