"""The target registry that the CLI, ``edgevt targets``, ``open_runner``, bundles, the report and
the docs all read.

Targets register themselves with ``@register_target`` (see ``edgevt.targets.base``); the
built-in ones are imported on first use. A target that needs an optional extra is listed with
what to install, so a missing backend is reported, never a crash.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from importlib import metadata
from pathlib import Path

from edgevt.artifact import ArtifactInfo
from edgevt.errors import EdgevtError
from edgevt.targets.base import Target, TargetSpec, artifact_name, require_info

__all__ = [
    "Target",
    "TargetSpec",
    "DEFAULT_TARGET",
    "all_targets",
    "artifact_name",
    "get_target",
    "read_artifact_info",
    "register_target",
    "target_for_path",
]

DEFAULT_TARGET = "onnx"  # the core dependency's target: what `edgevt export` writes by default
_REGISTRY: dict[str, Target] = {}
# Listing order of `edgevt targets` (plug-ins follow); the core target first, so that it is the
# one a shared suffix (.onnx) looks up first.
_ORDER = {"onnx": 0, "tensorrt": 1, "tflite": 2, "coreml": 3}
_loaded = False


def register_target(cls: type[Target]) -> type[Target]:
    """Class decorator: make a ``Target`` subclass known by its ``spec.name``."""
    _REGISTRY[cls.spec.name] = cls()
    return cls


def _load_builtins() -> None:
    """Import every module and package under ``edgevt/targets/`` (each target registers itself
    there, so a new one needs no edit here; heavy imports happen inside their functions), then
    plug-ins: the modules named by the ``edgevt.targets`` entry point group of installed
    packages and by ``$EDGEVT_TARGET_MODULES`` (comma-separated)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    plugins = [e.value for e in metadata.entry_points(group="edgevt.targets")]
    plugins += [m for m in os.environ.get("EDGEVT_TARGET_MODULES", "").split(",") if m.strip()]
    for name in plugins:
        try:
            importlib.import_module(name.strip())
        except EdgevtError:
            raise
        except Exception as exc:  # a plug-in's own bug (SyntaxError, RuntimeError...) too
            raise EdgevtError(
                f"cannot import the target plug-in {name!r} ({type(exc).__name__}: {exc}) — fix "
                "it, or remove it from $EDGEVT_TARGET_MODULES / uninstall its package."
            ) from exc


def all_targets() -> dict[str, Target]:
    """Every registered target: the built-in ones first, then plug-ins as they registered."""
    _load_builtins()
    names = sorted(_REGISTRY, key=lambda n: _ORDER.get(n, len(_ORDER)))  # a stable sort
    return {n: _REGISTRY[n] for n in names}


def get_target(name: str) -> Target:
    targets = all_targets()
    if name not in targets:
        raise EdgevtError(f"unknown target {name!r}; available here: {', '.join(targets)}.")
    return targets[name]


def target_for_path(path: Path) -> Target | None:
    """The target whose files end like ``path`` (the first registered, for a shared suffix:
    the file's own ArtifactInfo then says which target wrote it)."""
    return next(
        (t for t in all_targets().values() if any(path.name.endswith(s) for s in t.spec.suffixes)),
        None,
    )


def read_artifact_info(path: str | Path) -> ArtifactInfo:
    """The ArtifactInfo an exported file carries: the one way edgevt learns its model, target
    and precision."""
    path = Path(path)
    target = target_for_path(path)
    if target is None:
        known = sorted({s for t in all_targets().values() for s in t.spec.suffixes})
        raise EdgevtError(f"{path}: unknown artifact type (known: {', '.join(known)}, fused .pt).")
    if not path.exists():
        raise EdgevtError(f"{path} does not exist — check the path.")
    if path.is_file() and path.stat().st_size == 0:
        raise EdgevtError(f"{path} is empty (0 bytes): corrupt or truncated; re-export it.")
    if path.is_dir() and not any(path.iterdir()):
        raise EdgevtError(f"{path} is an empty folder, not a model; re-export it.")
    return require_info(target.read_info(path), path)


def artifact_target(path: str | Path) -> Target:
    """The registered target that wrote ``path``, by the info the file carries."""
    return get_target(read_artifact_info(path).target)


def markdown_table() -> str:
    """The targets table of the README (``edgevt targets --markdown``)."""
    lines = [
        "| target | files | precisions | install | runs on | what it is |",
        "|---|---|---|---|---|---|",
    ]
    for t in all_targets().values():
        s = t.spec
        install = f"`pip install edgevt[{s.extra}]`" if s.extra else "core"
        where = "GPU" if s.needs_gpu else "macOS" if s.needs_macos else "CPU"
        lines.append(
            f"| `{s.name}` | `{'`, `'.join(s.suffixes)}` | {', '.join(s.precisions)} | {install} "
            f"| {where} | {s.description} |"
        )
    return "\n".join(lines)
