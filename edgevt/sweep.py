"""`edgevt sweep SWEEP.toml`: models x targets x precisions x calibrations, run as Ray tasks.

A sweep expands into groups, one per (model, calibration method, calibration size). Each group
is an ordinary `edgevt run` config, written to ``<out>/<group>/run.toml``: one calibration and
one [[export]] per target, every export taking the sweep's precisions. A group's stages keep
`edgevt run`'s keys and its pipeline.json, so ``edgevt run <out>/<group>/run.toml`` redoes (or
skips) exactly what the sweep did, and a re-run sweep skips every finished cell.

The driver (this process) decides which stages are fresh and records what finished; the work
runs as Ray tasks:
- a group's calibration, once, its table shared by every export of the group;
- one task per export (a "cell": export every precision, evaluate, time on the host);
- per [[devices]] entry, the bundle's own runner on a node that advertises the device's
  profile as a Ray resource (``ray start ... --resources '{"raspberry-pi-5": 1}'``); the bundle
  travels to that node as bytes and its results come back into ``bundles/<device>/results``.

Without ``--address`` Ray starts on this machine and stops at the end.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgevt.errors import BackendMissingError, EdgevtError, as_edgevt_error
from edgevt.io import atomic_path, read_toml, write_json

SUMMARY = "sweep.json"
SECTIONS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "model": {"name": str, "checkpoint": str, "pretrained": bool, "seed": int, "label": str},
    "sweep": {"targets": list, "precisions": list, "methods": list, "sizes": list,
              "max_drop": (int, float)},
    "calibration": {"data": str},
    "eval": {"data": str, "limit": int, "workers": int},
    "bench": {"threads": list, "seconds": (int, float), "iterations": int},
    "devices": {"name": str, "samples": int},
    "report": {"title": str},
}  # fmt: skip
SETTLED = ("skipped", "failed", "no node")  # statuses a cell gets without running
DEFAULT_BUDGET = 1.0  # points of top-1 the leaderboard lets an artifact lose against fp32


@dataclass
class Group:
    """One `edgevt run` config of the sweep: a model with one calibration setting."""

    name: str
    config_path: Path
    config: dict[str, Any]

    @property
    def out(self) -> Path:
        return Path(self.config["out"])


@dataclass
class Cell:
    """One unit of work the driver schedules: a calibration, an export, a device run."""

    group: Group
    kind: str  # "calibrate", "export", "device"
    name: str  # the stage name in the group's pipeline.json
    status: str = "waiting"  # waiting, running, done, skipped, failed, no node (device)
    node: str | None = None
    seconds: float | None = None
    error: str | None = None
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.group.name}/{self.name}"


@dataclass
class SweepOutcome:
    out: Path
    cells: list[Cell]
    report: Path | None = None

    @property
    def failed(self) -> list[Cell]:
        return [c for c in self.cells if c.status == "failed"]


@dataclass
class Plan:
    """A checked sweep file: its groups, and what its report needs."""

    root: Path
    groups: list[Group]
    budget: float  # the leaderboard's top-1 budget, points
    title: str


def load_sweep(path: str | Path, out: str | Path | None = None) -> Plan:
    """Check a sweep file and expand it into groups (their run.toml written and checked)."""
    from edgevt.pipeline import SECTIONS as RUN_SECTIONS
    from edgevt.pipeline import _check_types, did_you_mean, load_config

    path = Path(path)
    sweep = read_toml(path, "sweep file")
    known = {"out", *SECTIONS}
    for name in sweep:
        if name not in known:
            hint = " (an `edgevt run` config? run it with `edgevt run`)" if name in RUN_SECTIONS \
                else ""  # fmt: skip
            raise EdgevtError(
                f"{path}: [{name}]: unknown section{did_you_mean(name, known)}{hint} Known: "
                f"{', '.join(sorted(known))}."
            )
    _check_types(path, sweep, SECTIONS, ("model", "devices"))
    base = path.resolve().parent
    root = Path(out).resolve() if out else (base / sweep.get("out", f"runs/{path.stem}")).resolve()
    models = sweep.get("model", [])
    if not models:
        raise EdgevtError(f'{path}: add at least one [[model]] with name = "efficientnet_lite0".')
    spec = sweep.get("sweep", {})
    targets = _strings(path, spec, "targets", ["onnx"])
    precisions = _strings(path, spec, "precisions", ["fp32", "int8"])
    methods = _strings(path, spec, "methods", ["percentile"])
    sizes = spec.get("sizes", [512])
    if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                            for s in sizes):  # fmt: skip
        raise EdgevtError(f"{path}: [sweep].sizes = {sizes!r}: expected integers above 0.")
    _check_precisions(path, targets, precisions)
    int8 = "int8" in precisions
    calibrations = [(m, s) for m in methods for s in sizes] if int8 else [(None, None)]
    labels = [m.get("label", m.get("name", "?")) for m in models]
    twice = sorted({n for n in labels if labels.count(n) > 1})
    if twice:
        raise EdgevtError(
            f"{path}: two [[model]] tables are both {twice[0]!r}; give each a label = \"...\"."
        )
    groups, texts = [], []
    with tempfile.TemporaryDirectory(prefix="edgevt-sweep-") as tmp:
        for model, label in zip(models, labels, strict=True):
            if "name" not in model:
                raise EdgevtError(
                    f'{path}: [[model]] needs name = "levit_128s" (see `edgevt models`).'
                )
            for method, size in calibrations:
                name = label if len(calibrations) == 1 else f"{label}-{method}-{size}"
                config = _group_config(path, sweep, base, model, targets, precisions, method,
                                       size)  # fmt: skip
                title = sweep.get("report", {}).get("title", "edgevt sweep")
                config["report"] = {"title": f"{title}: {name}"}
                text = (f"# written by `edgevt sweep {path.name}`: one group of the sweep; "
                        "`edgevt run` this file to redo it alone\n" + to_toml(config))  # fmt: skip
                draft = Path(tmp) / f"{len(groups)}.toml"
                draft.write_text(text)
                try:  # every group is checked before any is written
                    checked = load_config(draft)
                except EdgevtError as exc:  # say which part of the sweep made the bad group
                    raise EdgevtError(f"{path}: model {label}: {exc}") from None
                checked["out"] = str(root / name)  # `out = "."`: the folder run.toml is in
                groups.append(Group(name, root / name / "run.toml", checked))
                texts.append(text)
    for group, text in zip(groups, texts, strict=True):
        group.out.mkdir(parents=True, exist_ok=True)
        with atomic_path(group.config_path) as tmp_file:
            tmp_file.write_text(text)
    budget = float(spec.get("max_drop", DEFAULT_BUDGET))
    title = sweep.get("report", {}).get("title", f"edgevt sweep: {path.stem}")
    return Plan(root, groups, budget, title)


def _check_precisions(path: Path, targets: list[str], precisions: list[str]) -> None:
    """Each target exports the precisions it offers; one that no target offers is a typo."""
    from edgevt.pipeline import did_you_mean
    from edgevt.targets import get_target

    offered = {"int8"}
    for name in targets:
        try:
            offered |= set(get_target(name).spec.precisions)
        except EdgevtError as exc:
            raise EdgevtError(f"{path}: [sweep].targets: {exc}") from None
    for p in precisions:
        if p not in offered:
            raise EdgevtError(
                f"{path}: [sweep].precisions: no target of the sweep offers {p!r}"
                f"{did_you_mean(p, offered)} They offer {', '.join(sorted(offered))}."
            )


def _strings(path: Path, table: dict[str, Any], key: str, default: list[str]) -> list[str]:
    values = table.get(key, default)
    if not values or not all(isinstance(v, str) and v for v in values):
        raise EdgevtError(f"{path}: [sweep].{key} = {values!r}: expected a list of names.")
    return list(dict.fromkeys(values))


def _group_config(
    path: Path,
    sweep: dict[str, Any],
    base: Path,
    model: dict[str, Any],
    targets: list[str],
    precisions: list[str],
    method: str | None,
    size: int | None,
) -> dict[str, Any]:
    """The `edgevt run` config of one group: absolute paths, one [[export]] per target."""
    from edgevt.devices import load_profile
    from edgevt.pipeline import _run_name
    from edgevt.targets import get_target

    def absolute(value: str) -> str:
        return str((base / value).resolve())

    config: dict[str, Any] = {"out": "."}
    config["model"] = {k: v for k, v in model.items() if k != "label"}
    if "checkpoint" in model:
        config["model"]["checkpoint"] = absolute(model["checkpoint"])
    exports = []
    for name in targets:
        try:
            target = get_target(name)
        except EdgevtError as exc:
            raise EdgevtError(f"{path}: [sweep].targets: {exc}") from None
        offered = [p for p in precisions if p == "int8" or p in target.spec.precisions]
        export = {"target": target.spec.name, "int8": "int8" in offered}
        extra = [p for p in offered if p not in ("fp32", "int8")]
        if extra:
            export["precisions"] = extra
        exports.append(export)
    config["export"] = exports
    if method is not None:
        data = sweep.get("calibration", {}).get("data")
        if data is None:
            raise EdgevtError(f"{path}: int8 needs [calibration] data = IMAGE_DIR.")
        config["calibration"] = {"data": absolute(data), "method": method, "size": size}
    if "eval" in sweep:
        config["eval"] = dict(sweep["eval"])
        if "data" in config["eval"]:
            config["eval"]["data"] = absolute(config["eval"]["data"])
    if "bench" in sweep:
        config["bench"] = dict(sweep["bench"])
    devices = []
    for device in sweep.get("devices", []):
        profile = load_profile(device.get("name", "?"))
        runs = [_run_name(e) for t in profile.targets for e in exports if e["target"] == t]
        if runs:  # the export of the device's first runtime is its bundle
            devices.append({**device, "run": runs[0]})
    if devices:
        config["devices"] = devices
    return config


def to_toml(data: dict[str, Any]) -> str:
    """TOML of a config: scalars, lists of scalars, tables and arrays of tables (enough for an
    `edgevt run` config; the standard library reads TOML but does not write it)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)  # a TOML basic string: the same escapes
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {v!r} as TOML")

    lines = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, (dict, list))
             or (isinstance(v, list) and not any(isinstance(x, dict) for x in v))]  # fmt: skip
    for key, v in data.items():
        tables = [v] if isinstance(v, dict) else v if isinstance(v, list) else []
        if not tables or not all(isinstance(t, dict) for t in tables):
            continue
        for table in tables:
            lines += ["", f"[[{key}]]" if isinstance(v, list) else f"[{key}]"]
            lines += [f"{k} = {value(x)}" for k, x in table.items()]
    return "\n".join(lines) + "\n"


# --- the driver ------------------------------------------------------------------------------


def run_sweep(
    path: str | Path,
    address: str | None = None,
    out: str | Path | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> SweepOutcome:
    """Run every cell of a sweep that is not finished already; a failed cell is named and the
    others go on. Returns every cell with its status; writes ``<out>/sweep.json``, each group's
    report and the sweep's report (with its leaderboard) in ``<out>/report``."""
    from edgevt.run import run_lock

    plan = load_sweep(path, out)
    root, groups = plan.root, plan.groups
    with contextlib.ExitStack() as held:
        for group in groups:  # a second sweep (or `edgevt run`) of a group is refused
            held.enter_context(run_lock(group.out))
        held.enter_context(_ray_session(address, log))
        cells = _Driver(groups, force, log, progress).run()
    outcome = SweepOutcome(root, cells)
    write_json(root / SUMMARY, {
        "format": "edgevt.sweep/1", "sweep": str(Path(path).resolve()),
        "groups": {g.name: str(g.config_path) for g in groups},
        "cells": [{"cell": c.label, "kind": c.kind, "status": c.status, "node": c.node,
                   "seconds": c.seconds, "error": c.error} for c in cells],
    })  # fmt: skip
    outcome.report = _reports(plan, log)
    return outcome


@contextlib.contextmanager
def _ray_session(address: str | None, log: Callable[[str], None]) -> Iterator[None]:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
    try:
        import ray
    except ImportError:
        raise BackendMissingError(
            "edgevt sweep runs on Ray, which is not installed: pip install 'edgevt[ray]'."
        ) from None
    if ray.is_initialized():  # a caller's session (a notebook, a test): use it as it is
        yield
        return
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        else:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     logging_level="ERROR", object_store_memory=256 * 2**20)  # fmt: skip
    except OSError as exc:  # Ray's sockets live under RAY_TMPDIR (default /tmp)
        raise EdgevtError(
            f"cannot start Ray here: {' '.join(str(exc).split())[:300]} — if the path is too "
            "long, point RAY_TMPDIR at a short folder (e.g. RAY_TMPDIR=/tmp/ray)."
        ) from None
    except (ConnectionError, RuntimeError, ValueError) as exc:
        said = " ".join(str(exc).split())[:300]
        raise EdgevtError(
            f"cannot {'join the Ray cluster at ' + address if address else 'start Ray here'} "
            f"({said}) — check the address (`ray status` on the head prints it) and, with token "
            "auth, that RAY_AUTH_TOKEN is set here as on the head."
        ) from None
    restore = _stop_on_sigterm()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    log(f"ray: {len(nodes)} node(s), {int(ray.cluster_resources().get('CPU', 0))} CPU(s)"
        + (f" at {address}" if address else " started on this machine"))  # fmt: skip
    try:
        yield
    finally:
        ray.shutdown()  # a local Ray's processes go with it
        restore()


def _stop_on_sigterm() -> Callable[[], None]:
    """SIGTERM (a `kill`, a CI timeout) unwinds like Ctrl-C, so Ray is shut down and the run
    locks are released instead of leaving Ray's processes behind."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, before)


class _Driver:
    """Submits the cells whose stages are not fresh, in dependency order, and records each
    cell's stages in its group's pipeline.json as it finishes."""

    def __init__(
        self, groups: list[Group], force: bool, log: Callable[[str], None], progress: bool
    ) -> None:
        from edgevt.pipeline import _State

        self.groups, self.force, self.log, self.progress = groups, force, log, progress
        self.states = {g.name: _State(g.out) for g in groups}
        self.cells: list[Cell] = []
        self.pending: dict[Any, Cell] = {}  # Ray ObjectRef -> its cell
        self.started: dict[str, float] = {}
        self.bundled: set[str] = set()  # groups whose device cells are submitted

    def run(self) -> list[Cell]:
        import ray
        from tqdm.auto import tqdm

        for group in self.groups:
            self._submit_group(group)
        with tqdm(total=len(self.cells), unit="cell", desc="sweep",
                  disable=None if self.progress else True) as bar:  # fmt: skip
            bar.update(sum(c.status in SETTLED for c in self.cells))
            while self.pending:
                ready, _ = ray.wait(list(self.pending), num_returns=1)
                for ref in ready:
                    cell = self.pending.pop(ref)
                    self._finish(cell, ref)
                    bar.update(1)
                    if cell.kind != "device" and self._group_settled(cell.group):
                        before = len(self.cells)
                        self._submit_devices(cell.group)
                        bar.total += len(self.cells) - before
                        bar.update(sum(c.status in SETTLED for c in self.cells[before:]))
                counts = {s: sum(c.status == s for c in self.cells)
                          for s in ("done", "skipped", "running", "failed")}  # fmt: skip
                bar.set_postfix(counts, refresh=True)
        return self.cells

    # -- submitting

    def _submit_group(self, group: Group) -> None:
        from edgevt.pipeline import _calibrate, _export, _model_key, _run_name

        model_key = _model_key(group.config)
        planner = _Planner(self.states[group.name], self.force)
        calib_key = _calibrate(group.config, planner, model_key)
        calibration = None
        if "calibration" in group.config:
            cell = self._cell(group, "calibrate", "calibrate")
            if planner.pending:
                calibration = self._submit(cell, _calibrate_task, group.config, model_key,
                                           self._snapshot(group), self.force)  # fmt: skip
            else:
                cell.status = "skipped"
        for spec in group.config["export"]:
            planner = _Planner(self.states[group.name], self.force)
            _export(group.config, spec, planner, model_key, calib_key)
            cell = self._cell(group, "export", f"export {_run_name(spec)}", spec=spec)
            if not planner.pending:
                cell.status = "skipped"
                continue
            self._submit(cell, _export_task, group.config, spec, model_key, calib_key,
                         self._snapshot(group), self.force, calibration)  # fmt: skip
        if self._group_settled(group):
            self._submit_devices(group)

    def _submit_devices(self, group: Group) -> None:
        """Bundles (here: they read this machine's run directories), then each bundle's runner
        on a node of its device."""
        from edgevt.pipeline import _bundles, _key, _run_name, _Stages

        if group.name in self.bundled:
            return
        self.bundled.add(group.name)
        why = None
        if any(c.status == "failed" for c in self.cells if c.group is group):
            why = "not run: an export of this group failed"  # their run may be missing
        else:
            stage = _Stages(group.out, False, lambda message: None, self.states[group.name])
            run_dirs = [group.out / _run_name(e) for e in group.config["export"]]
            try:  # bundles are made here: they read this machine's run directories
                _bundles(group.config, stage, run_dirs)
            except EdgevtError as exc:
                why = f"its bundle could not be made: {exc}"
        if why is not None:
            for device in group.config.get("devices", []):
                cell = self._cell(group, "device", f"device {device['name']}")
                cell.status, cell.error = "failed", why
                self.log(f"[fail] {cell.label}: {why}")
            return
        bench = group.config.get("bench", {})
        for device in group.config.get("devices", []):
            name = device["name"]
            cell = self._cell(group, "device", f"device {name}")
            folder = group.out / "bundles" / name
            key = _key(self.states[group.name].stages.get(f"bundle {name}", {}).get("key"), bench)
            record = self.states[group.name].stages.get(cell.name, {})
            if not self.force and record.get("key") == key and record.get("outputs") and all(
                Path(p).exists() for p in record["outputs"]
            ):
                cell.status = "skipped"
                continue
            if not _advertised(name):  # a task nobody can run would wait forever
                cell.status = "no node"
                cell.error = (
                    f"no Ray node advertises {name}; its bundle is {folder}. Join the device: "
                    f"ray start --address ADDR --num-cpus 0 --resources '{{\"{name}\": 1}}', "
                    "then run the sweep again with --address ADDR"
                )
                self.log(f"[wait] {cell.label}: {cell.error}")
                continue
            cell.spec = {"key": key, "folder": str(folder)}
            args = ["--seconds", str(bench.get("seconds", 3.0)),
                    "--iterations", str(bench.get("iterations", 20))]  # fmt: skip
            self._submit(cell, _device_task, _pack(folder), args, name, resources={name: 1})

    def _cell(self, group: Group, kind: str, name: str, **extra: Any) -> Cell:
        cell = Cell(group, kind, name, **extra)
        self.cells.append(cell)
        return cell

    def _snapshot(self, group: Group) -> dict[str, Any]:
        return dict(self.states[group.name].stages)

    def _submit(
        self, cell: Cell, func: Callable[..., Any], *args: Any, resources: dict | None = None
    ) -> Any:
        import ray

        options: dict[str, Any] = {"num_cpus": 0 if resources else 1, "max_retries": 0}
        if resources:
            options["resources"] = resources
        ref = ray.remote(func).options(**options).remote(*args)
        cell.status = "running"
        self.started[cell.label] = time.perf_counter()
        self.pending[ref] = cell
        return ref

    # -- finishing

    def _finish(self, cell: Cell, ref: Any) -> None:
        import ray

        cell.seconds = round(time.perf_counter() - self.started[cell.label], 1)
        try:
            result = ray.get(ref)
        except Exception as exc:  # the cell's own error, named; the others go on
            cell.status, cell.error = "failed", _reason(exc)
            self.log(f"[fail] {cell.label}: {cell.error}")
            return
        cell.node = result["node"]
        state = self.states[cell.group.name]
        if cell.kind == "device":
            results = Path(cell.spec["folder"]) / "results"
            results.mkdir(parents=True, exist_ok=True)
            written = []
            for name, data in result["files"].items():
                with atomic_path(results / Path(name).name) as tmp:
                    tmp.write_bytes(data)
                written.append(results / Path(name).name)
            state.done(cell.name, cell.spec["key"], written)
        else:
            for stage, key, outputs in result["finished"]:
                state.done(stage, key, outputs)
        cell.status = "done"
        self.log(f"[done] {cell.label} ({cell.seconds:.0f} s)")

    def _group_settled(self, group: Group) -> bool:
        return all(c.status in ("done", "skipped", "failed", "no node")
                   for c in self.cells if c.group is group and c.kind != "device")  # fmt: skip


def _advertised(resource: str) -> bool:
    import ray

    return any(n.get("Alive") and n.get("Resources", {}).get(resource, 0) > 0
               for n in ray.nodes())  # fmt: skip


class _Planner:
    """A pipeline stage runner that runs nothing: it lists the stages that are not fresh."""

    def __init__(self, state: Any, force: bool) -> None:
        self.state, self.force = state, force
        self.pending: list[str] = []

    def __call__(self, name: str, key: str, outputs: list[Path], work: Callable[[], None]):
        if self.force or not self.state.fresh(name, key, outputs):
            self.pending.append(name)


def _reason(exc: BaseException) -> str:
    """One line for a failed task: the edgevt message where there is one."""
    cause = getattr(exc, "cause", None) or exc
    known = as_edgevt_error(cause)
    if known is not None:
        return str(known)
    said = " ".join(str(cause).split())[:300]
    return f"{type(cause).__name__}: {said}"


# --- the tasks (run in Ray workers; each returns what the driver records) -----------------


def _node() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _calibrate_task(config: dict[str, Any], model_key: str, stages: dict, force: bool) -> dict:
    payload = {"kind": "calibrate", "config": config, "model_key": model_key}
    return _in_a_fresh_process(payload, stages, force, "calibrate")


def _export_task(
    config: dict[str, Any],
    spec: dict[str, Any],
    model_key: str,
    calib_key: str,
    stages: dict,
    force: bool,
    calibration: dict | None = None,  # the calibration cell's result: this cell waits for it
) -> dict:
    from edgevt.pipeline import _run_name

    payload = {"kind": "export", "config": config, "spec": spec, "model_key": model_key,
               "calib_key": calib_key}  # fmt: skip
    return _in_a_fresh_process(payload, stages, force, f"export-{_run_name(spec)}")


def _in_a_fresh_process(payload: dict, stages: dict, force: bool, name: str) -> dict:
    """Run one cell's stages in a new Python process, as `edgevt run` would: Ray gives a
    1-CPU task OMP_NUM_THREADS=1, and torch's float sums (calibration ranges, fused weights)
    change with its thread count, so a cell in a Ray worker would not compute what `edgevt run`
    computes. A fresh process also frees the cell's memory and keeps runtimes that must not
    share a process (ExecuTorch and PyTorch's thread pools) apart. Its output goes to
    ``<group>/logs/<cell>.log``."""
    import subprocess

    out = Path(payload["config"]["out"])
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    with tempfile.TemporaryDirectory(prefix="edgevt-cell-") as tmp:
        request, answer = Path(tmp) / "cell.json", Path(tmp) / "result.json"
        request.write_text(json.dumps({**payload, "stages": stages, "force": force}))
        with open(out / "logs" / f"{name}.log", "w") as log:
            subprocess.run([sys.executable, "-m", "edgevt.sweep", str(request), str(answer)],
                           stdout=log, stderr=subprocess.STDOUT, env=env)  # fmt: skip
        if not answer.is_file():
            raise EdgevtError(f"the cell's process died; see {out / 'logs' / f'{name}.log'}")
        result = json.loads(answer.read_text())
    if "error" in result:
        raise EdgevtError(result["error"])
    finished = [(stage, key, [Path(p) for p in outputs]) for stage, key, outputs in
                result["finished"]]  # fmt: skip
    return {"node": _node(), "finished": finished}


def _cell_main(request: Path, answer: Path) -> None:
    """``python -m edgevt.sweep CELL.json RESULT.json``: one cell's stages (see above)."""
    from edgevt.pipeline import _calibrate, _export, _Recorder, _Stages

    cell = json.loads(request.read_text())
    config = cell["config"]
    recorder = _Recorder(cell["stages"])
    stage = _Stages(Path(config["out"]), cell["force"], print, recorder)
    try:
        if cell["kind"] == "calibrate":
            _calibrate(config, stage, cell["model_key"])
        else:
            _export(config, cell["spec"], stage, cell["model_key"], cell["calib_key"])
        result: dict[str, Any] = {"finished": [(name, key, [str(p) for p in outputs])
                                               for name, key, outputs in recorder.finished]}
    except Exception as exc:  # the message goes to the driver; the traceback to the log
        import traceback

        traceback.print_exc()
        result = {"error": _reason(exc)}
    with atomic_path(answer) as tmp:
        tmp.write_text(json.dumps(result))


def _pack(folder: Path) -> bytes:
    """A bundle as tar bytes: a device node shares no file system with this machine."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname="bundle", filter=lambda t: None if "/results/" in t.name else t)
    return buffer.getvalue()


def _device_task(bundle: bytes, args: list[str], device: str) -> dict:
    """Unpack a bundle on the device's node, run its runner there, return its results."""
    import subprocess

    with tempfile.TemporaryDirectory(prefix="edgevt-bundle-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
            tar.extractall(tmp, filter="data")
        folder = Path(tmp) / "bundle"
        out = folder / "results"
        proc = subprocess.run(
            [sys.executable, "run_bundle.py", *args, "--out", str(out)],
            cwd=folder, capture_output=True, text=True,
        )  # fmt: skip
        if proc.returncode != 0:
            tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])[:400]
            raise EdgevtError(f"run_bundle.py failed on the {device} node: {tail}")
        files = {p.name: p.read_bytes() for p in sorted(out.glob("*.json"))}
    return {"node": _node(), "files": files}


# --- reports -------------------------------------------------------------------------------


def _reports(plan: Plan, log: Callable[[str], None]):
    """Each group's report (what `edgevt run` writes) and the sweep's, with its leaderboard."""
    from edgevt.leaderboard import leaderboard
    from edgevt.pipeline import _run_name
    from edgevt.report import collect, write_report

    groups = plan.groups
    run_dirs, names, device_results = [], {}, []
    for group in groups:
        found = [group.out / _run_name(e) for e in group.config["export"]]
        found = [d for d in found if (d / "manifest.json").is_file()]
        results = sorted((group.out / "bundles").glob("*/results/*.json"))
        if not found:
            continue
        report = collect(found, results)
        write_report(report, group.out / "report", group.config["report"]["title"])
        run_dirs += found
        names.update({d: f"{group.name}/{d.name}" for d in found})
        device_results += results
    if not run_dirs:
        log("no cell finished: no report written")
        return None
    report = collect(run_dirs, device_results, names=names)
    report.leaderboard = leaderboard(report, plan.budget)
    report.leaderboard_budget = plan.budget
    return write_report(report, plan.root / "report", plan.title)["html"]


if __name__ == "__main__":
    _cell_main(Path(sys.argv[1]), Path(sys.argv[2]))
