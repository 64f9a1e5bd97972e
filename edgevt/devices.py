"""Device profiles: the TOML files in the repository's top-level ``targets/`` folder.

A profile says what runs on a device (which targets' files, in order of preference; precisions,
threads, Core ML compute units) and how a bundle reaches it (ssh, adb, a Mac). ``edgevt bundle
--device NAME`` and the report read them; a path to a ``.toml`` works wherever a name does, so
users add their own devices without editing edgevt.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from edgevt.errors import EdgevtError
from edgevt.io import read_toml

CONNECTIONS = ("ssh", "adb", "macos", "local")
REQUIRED = ("name", "description", "os", "arch", "targets", "precisions", "threads")


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    os: str
    arch: str
    targets: tuple[str, ...]  # registered export targets whose files it runs, preferred first
    precisions: tuple[str, ...]
    threads: tuple[int, ...]
    connect: str = "ssh"
    runtime_install: str = ""
    compute_units: tuple[str, ...] = ()
    core: str = ""  # the ARM core `edgevt bundle --verify-aarch64` emulates (cortex-a76)
    path: Path | None = field(default=None, compare=False)


def profiles_dir() -> Path:
    """``$EDGEVT_DEVICES`` or the repository's ``targets/`` folder."""
    env = os.environ.get("EDGEVT_DEVICES")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "targets"


def list_profiles() -> list[str]:
    folder = profiles_dir()
    return sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """A profile by name (``raspberry-pi-5``) or from a ``.toml`` path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = profiles_dir() / f"{name_or_path}.toml"
        if not path.is_file():
            known = ", ".join(list_profiles()) or f"none in {profiles_dir()}"
            raise EdgevtError(
                f"unknown device {name_or_path!r}; known: {known}. A path to your own "
                ".toml profile works too (copy one from targets/)."
            )
    data = read_toml(path, "device profile")
    missing = [k for k in REQUIRED if k not in data]
    unknown = set(data) - (set(DeviceProfile.__dataclass_fields__) - {"path"})
    if "artifacts" in unknown or "backend" in unknown:
        raise EdgevtError(
            f"device profile {path}: 'artifacts' and 'backend' are now one key, targets: the "
            "export targets whose files the device runs, preferred first (`edgevt targets`)."
        )
    if missing or unknown:
        raise EdgevtError(
            f"device profile {path}: "
            + (f"missing {', '.join(missing)}" if missing else "")
            + ("; " if missing and unknown else "")
            + (f"unknown key(s) {', '.join(sorted(unknown))}" if unknown else "")
            + f" — a profile has {', '.join(REQUIRED)} (optional: the rest of a shipped one); "
            "copy one from targets/ and edit it."
        )
    _check_targets(path, data["targets"])
    _check_values(path, data)
    if data.get("connect", "ssh") not in CONNECTIONS:
        raise EdgevtError(f"{path}: connect {data['connect']!r} is not one of {CONNECTIONS}.")
    for key in ("targets", "precisions", "threads", "compute_units"):
        if key in data:
            data[key] = tuple(data[key])
    return DeviceProfile(**data, path=path)


def _check_values(path: Path, data: dict) -> None:
    """Values a device would choke on (``threads = "two"``), named with their key."""
    from edgevt.targets import all_targets

    for key, value in data.items():
        if key in ("targets", "precisions", "threads", "compute_units"):
            if not isinstance(value, list) or not value:
                raise EdgevtError(f"device profile {path}: {key} must be a non-empty list.")
            if key != "threads" and not all(isinstance(v, str) for v in value):
                raise EdgevtError(f"device profile {path}: {key} must be a list of names.")
        elif not isinstance(value, str):
            raise EdgevtError(f"device profile {path}: {key} = {value!r} must be a string.")
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in data["threads"]):
        raise EdgevtError(
            f"device profile {path}: threads = {data['threads']!r} must be integers >= 1."
        )
    known = {p for t in all_targets().values() for p in t.spec.precisions}
    unknown = [p for p in data["precisions"] if p not in known]
    if unknown:
        raise EdgevtError(
            f"device profile {path}: unknown precision(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(known))}."
        )


def _check_targets(path: Path, targets: object) -> None:
    from edgevt.targets import all_targets

    known = all_targets()
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise EdgevtError(
            f"{path}: targets must be a list of export target names (`edgevt targets`)."
        )
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise EdgevtError(
            f"{path}: unknown target(s) {', '.join(map(repr, unknown))} in targets; known: "
            f"{', '.join(known)} (`edgevt targets`)."
        )
