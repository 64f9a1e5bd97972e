"""edgevt: take a trained vision transformer to an edge device, and prove what it costs.

Heavy libraries are imported on first use, so ``import edgevt`` and ``edgevt --help`` stay fast.
"""

from __future__ import annotations

import logging
from typing import Any

# torchao (which ExecuTorch's extra installs, and transformers imports when present) registers
# Enums with torch's pytree, and torch logs a deprecation warning for each on every command:
# noise about a library's internals that users cannot act on.
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

__version__ = "0.1.0"

_API = {
    "fuse": "edgevt.api",
    "export": "edgevt.api",
    "evaluate": "edgevt.api",
    "debug": "edgevt.debug",
    "open_runner": "edgevt.api",
    "load_fused": "edgevt.api",
    "load_model": "edgevt.models",
    "list_models": "edgevt.models",
    "EdgevtError": "edgevt.errors",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'edgevt' has no attribute {name!r}")
