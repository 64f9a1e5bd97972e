"""Where benchmark scripts leave their tables: printed, and written atomically to a file."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from edgevt.io import atomic_path


def command_line() -> str:
    """The command that ran this script, as a reader would retype it."""
    return shlex.join([Path(sys.executable).name, *sys.argv])


def write_report(text: str, out: Path) -> None:
    """Print ``text`` and write it to ``out`` (temp file + rename: never half-written)."""
    print("\n" + text)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    print(f"written to {out}")


def cpu_flags() -> str:
    """Whether this CPU has the int8 dot-product instructions int8 kernels depend on."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return "flags unknown"
    found = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return " ".join(found) or "no AVX2"
