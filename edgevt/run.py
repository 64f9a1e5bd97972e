"""A run directory: every stage writes its artifacts here and records itself in manifest.json.

The manifest says what went in (model, checkpoint and its hash, data, settings), which library
versions did the work, and what came out (paths, hashes, results), so a number in a report can
be traced back to the exact inputs that produced it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from edgevt.errors import EdgevtError, describe_os_error
from edgevt.io import sha256, write_json

MANIFEST = "manifest.json"
LOCK = ".edgevt.lock"
_HELD: dict[Path, int] = {}  # run directories this process holds the lock of (re-entrant)
_TRACKED_PACKAGES = (
    "edgevt",
    "torch",
    "timm",
    "transformers",
    "onnx",
    "onnxruntime",
    "numpy",
    "pillow",
)


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class RunDir:
    """``runs/<name>/`` with its manifest."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise EdgevtError(
                f"{self.path} is a file, not a run directory — choose another -o or remove it."
            )
        if (self.path / MANIFEST).is_dir():
            raise EdgevtError(
                f"{self.path / MANIFEST} is a folder, not the run's record — remove it or "
                "choose another -o."
            )
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest = self._read()

    def _read(self) -> dict[str, Any]:
        if not (self.path / MANIFEST).is_file():
            return {"created": _now(), "stages": {}}
        return read_manifest(self.path)

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold this run directory for one command (see ``run_lock``)."""
        return run_lock(self.path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def record(
        self,
        stage: str,
        inputs: dict[str, Any],
        settings: dict[str, Any] | None = None,
        artifacts: dict[str, Path] | None = None,
        results: dict[str, Any] | None = None,
    ) -> None:
        """Record one finished stage (replacing an earlier record of it) and save."""
        self.manifest = self._read()  # another RunDir on the same folder may have written
        self.manifest["stages"][stage] = {
            "finished": _now(),
            "inputs": inputs,
            "settings": settings or {},
            "artifacts": {
                name: {
                    "path": str(p.relative_to(self.path) if p.is_relative_to(self.path) else p),
                    "sha256": sha256(p),
                    "bytes": p.stat().st_size,
                }
                for name, p in (artifacts or {}).items()
            },
            "results": results or {},
        }
        self.manifest["updated"] = _now()
        self.manifest["versions"] = library_versions()
        write_json(self.path / MANIFEST, self.manifest)


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """``run_dir/manifest.json``, checked: a JSON object whose stages are records."""
    manifest = Path(run_dir) / MANIFEST
    try:
        raw = manifest.read_bytes()
    except OSError as exc:  # permissions: the records are fine, never advise removing them
        raise EdgevtError(describe_os_error(exc, manifest)) from exc
    try:
        data = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgevtError(
            f"{manifest} is not readable JSON ({exc}) — remove it (the run's records are lost) "
            "or write to a fresh -o folder."
        ) from exc
    if not isinstance(data, dict):
        raise EdgevtError(
            f"{manifest} is not a JSON object, so not an edgevt manifest — remove it or write to "
            "a fresh -o folder."
        )
    if not isinstance(data.get("stages", {}), dict):
        raise EdgevtError(
            f"{manifest} records no stages (its stages are not an object) — remove it or write "
            "to a fresh -o folder."
        )
    stages = data.get("stages", {})
    broken = [name for name, stage in stages.items() if not isinstance(stage, dict)]
    if broken:
        raise EdgevtError(
            f"{manifest}: stage {broken[0]!r} is not a record (damaged or edited by hand); "
            "re-run that stage."
        )
    for name, stage in stages.items():
        _check_stage(manifest, name, stage)
    data.setdefault("stages", {})
    return data


def _check_stage(manifest: Path, name: str, stage: dict[str, Any]) -> None:
    """A stage record's shape: the report and bundles would otherwise skip what they cannot
    read and show a run with files silently missing."""

    def damaged(what: str) -> EdgevtError:
        return EdgevtError(
            f"{manifest}: stage {name!r} is damaged ({what}; edited by hand?); re-run that stage."
        )

    files = stage.get("artifacts", {})
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("path"), str) for v in files.values()
    ):
        raise damaged("its artifacts are not name -> {path, sha256} records")
    results = stage.get("results", {})
    if not isinstance(results, dict):
        raise damaged("its results are not an object")
    records = results.get("artifacts", [])
    if not isinstance(records, list) or not all(
        isinstance(r, str) or (isinstance(r, dict) and isinstance(r.get("file"), str))
        for r in records
    ):
        raise damaged("its results' artifacts are not a list of file records")


def recorded_files(data: dict[str, Any]) -> list[str]:
    """The artifact files the manifest's stages say they wrote (typed export records)."""
    return [
        r["file"]
        for stage in data["stages"].values()
        for r in stage.get("results", {}).get("artifacts", [])
        if isinstance(r, dict)
    ]


def check_recorded_files(run_dir: Path, data: dict[str, Any]) -> None:
    """Refuse a run whose manifest records an artifact that is no longer there: a report or
    bundle of it would silently leave that file out."""
    for name in recorded_files(data):
        if not (Path(run_dir) / name).exists():
            raise EdgevtError(
                f"{run_dir} records {name} but the file is gone (deleted or moved); export it "
                "again into this run, or export into a fresh -o folder."
            )


@contextlib.contextmanager
def run_lock(path: str | Path) -> Iterator[None]:
    """Refuse a second process writing ``path`` at the same time, and remove the temp files
    that interrupted writes of earlier runs left (no other writer can own them while we hold
    the lock). Re-entrant within one process (``edgevt run`` exports inside its own run)."""
    import fcntl

    key = Path(path).resolve()
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    key.mkdir(parents=True, exist_ok=True)
    fd = os.open(key / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise EdgevtError(
            f"{key} is being written by another edgevt process (pid {holder}) — wait for it to "
            "finish, or write to another -o folder."
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        remove_stale_temps(key)
        _HELD[key] = 1
        yield
    finally:
        _HELD.pop(key, None)
        os.close(fd)  # closing releases the flock


@contextlib.contextmanager
def undo_on_error(path: str | Path, keep: tuple[str, ...] = ()) -> Iterator[None]:
    """A command that fails leaves its run directory as it found it: what it added is removed
    (the folder itself, if it made it) and the manifest is restored. Files it replaced stay
    replaced (they were written whole); files named in ``keep`` stay (a QAT checkpoint to
    resume from). An interrupt keeps what finished (see run_lock)."""
    path = Path(path)
    existed = path.is_dir()
    before = set(path.rglob("*")) if existed else set()
    manifest = path / MANIFEST
    saved = manifest.read_bytes() if manifest.is_file() else None
    try:
        yield
    except Exception:
        if not existed and not any((path / name).exists() for name in keep):
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_dir():
            added = sorted(set(path.rglob("*")) - before, key=lambda p: -len(p.parts))
            for p in added:
                if p.name == LOCK or p.relative_to(path).as_posix() in keep:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
            if saved is None:
                manifest.unlink(missing_ok=True)
            elif manifest.is_file() and manifest.read_bytes() != saved:
                from edgevt.io import atomic_path

                with atomic_path(manifest) as tmp:
                    tmp.write_bytes(saved)
        raise


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete ``.NAME.*.tmp`` files and folders (``edgevt.io.atomic_path``'s, Core ML's) and
    ``*.json.tmp`` under ``folder``: what a killed process left half-written."""
    stale = [
        p for p in folder.rglob(".*")
        if p.name.endswith(".tmp") and p.name.count(".") >= 2
    ] + list(folder.rglob("*.json.tmp"))  # fmt: skip
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale
