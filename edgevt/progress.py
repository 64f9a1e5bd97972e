"""One line before and after a step that has no progress bar of its own."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator


@contextlib.contextmanager
def step(what: str, show: bool = True) -> Iterator[None]:
    start = time.perf_counter()
    if show:
        print(f"{what} ...", file=sys.stderr, flush=True)
    yield
    if show:
        print(f"  done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
