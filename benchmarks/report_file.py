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
