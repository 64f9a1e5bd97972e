"""Atomic file writes: an interrupted run never leaves a half-written artifact behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgevt.errors import EdgevtError, as_edgevt_error, describe_os_error, path_problem


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    if path.is_dir():
        raise EdgevtError(f"{path} is a folder; give a file path to write (e.g. {path}/out.json).")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; artifacts are ordinary files
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except (OSError, RuntimeError) as exc:  # name the file meant, not its temp file
        error = as_edgevt_error(exc, path)
        if error is None:
            raise
        raise error from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a path in a temporary folder beside ``path``; on success move it onto ``path``
    (an existing folder is moved aside first, then deleted): for artifacts that are folders
    (a Core ML .mlpackage, an OpenVINO IR)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        staged, previous = tmp_dir / path.name, tmp_dir / "previous"
        yield staged
        if path.exists() or path.is_symlink():
            os.replace(path, previous)
        try:
            os.replace(staged, path)
        except OSError:
            if previous.exists():
                os.replace(previous, path)  # put the old package back
            raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    return Path(path)


def sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (or of every file under a folder, in sorted order)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        with open(file, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def artifact_size(path: str | os.PathLike[str]) -> int:
    """Bytes of a model file, or of every file in a model folder (an .mlpackage)."""
    path = Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def read_toml(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """Parse a TOML file, or raise one EdgevtError naming ``what`` it was and what is wrong."""
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise EdgevtError(path_problem(path, what) + "; check the path.")
    try:
        data = path.read_bytes()
    except OSError as exc:  # permissions: the file is fine, say so
        raise EdgevtError(describe_os_error(exc, path)) from exc
    try:
        return tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise EdgevtError(
            f"{what} {path} is not valid TOML: {exc} — fix it (configs/ and targets/ hold "
            "working examples)."
        ) from exc
