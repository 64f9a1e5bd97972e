"""The model zoo: a registry of entries, as in timm (`@register_model`, `create_model`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from edgevt.data.preprocess import Preprocess
from edgevt.errors import EdgevtError

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ModelEntry:
    """What edgevt knows about one architecture.

    Attributes:
        name: the zoo name (``levit_128s``).
        family: ``levit`` | ``cvt`` | ``cnn``; selects fusion rewrites.
        build: returns the model with its library's random initialisation.
        preprocess: eval preprocessing of the released checkpoints.
        source: where the definition comes from (``timm:levit_128s``).
        convert_state_dict: (state_dict, model) -> (format name, state_dict in the model's own
            key layout); recognises the architecture's real checkpoint layouts.
        load_hf_folder: (folder, model) -> state_dict for a Hugging Face model folder, or None.
        pretrained_path: a locally installable real checkpoint, or None.
    """

    name: str
    family: str
    build: Callable[[], nn.Module]
    preprocess: Preprocess
    source: str
    convert_state_dict: Callable[[StateDict, nn.Module], tuple[str, StateDict]]
    load_hf_folder: Callable[[Path, nn.Module], StateDict] | None = None
    pretrained_path: Callable[[], Path] | None = None
    description: str = ""
    checkpoint_formats: tuple[str, ...] = field(default_factory=tuple)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name} registered twice")
    _REGISTRY[entry.name] = entry
    return entry


_loaded = False


def _ensure_loaded() -> None:
    """Import every module of ``edgevt.models``: a family module registers its entries, so a
    new family is one new file, with no edit here."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib
    import pkgutil

    package = __name__.rpartition(".")[0]  # edgevt.models, found by path: no import cycle
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{package}.{module.name}")


def list_models() -> list[str]:
    _ensure_loaded()
    return list(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    if name not in _REGISTRY:
        close = [n for n in _REGISTRY if n.split("_")[0] in name or name in n]
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise EdgevtError(
            f"unknown model {name!r}.{hint} `edgevt models` lists the zoo: {', '.join(_REGISTRY)}."
        )
    return _REGISTRY[name]
