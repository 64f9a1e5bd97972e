"""A run directory: every stage writes its artifacts here and records itself in manifest.json.

The manifest says what went in (model, checkpoint and its hash, data, settings), which library
versions did the work, and what came out (paths, hashes, results), so a number in a report can
be traced back to the exact inputs that produced it.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from edgevt.io import sha256, write_json

MANIFEST = "manifest.json"
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
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest = self._read()

    def _read(self) -> dict[str, Any]:
        manifest = self.path / MANIFEST
        if manifest.is_file():
            return json.loads(manifest.read_text())
        return {"created": _now(), "stages": {}}

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
