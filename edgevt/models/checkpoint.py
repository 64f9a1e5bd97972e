"""Read real checkpoints from a local path and load them, with errors that name the problem."""

from __future__ import annotations

import errno
import pickle
from pathlib import Path

import torch
from torch import nn

from edgevt.errors import CheckpointError
from edgevt.models.registry import ModelEntry, StateDict

# Containers that training scripts wrap state dicts in (DeiT/LeViT: "model"; Lightning: ...).
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "model_ema", "module")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def read_state_dict(path: str | Path) -> StateDict:
    """Read a ``.pth``/``.pt``/``.bin`` (with ``weights_only=True``) or ``.safetensors`` file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; a Hugging Face folder needs config.json.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise CheckpointError(
                f"cannot read {path} as safetensors ({_short(exc)}): the file is truncated or "
                "not a safetensors file — copy it again, or pass the checkpoint you meant."
            ) from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # garbage, not code: the unpickler choked on it
            raise CheckpointError(
                f"cannot read {path}: it is corrupt, truncated or not a PyTorch checkpoint "
                f"({unpickler_reason(exc)}). Download or copy it again."
            ) from exc
        raise CheckpointError(
            f"{path} holds pickled Python objects besides tensors, which edgevt refuses to "
            "execute (weights_only=True). Re-save it as a plain state_dict: "
            "torch.save(model.state_dict(), 'weights.pth')."
        ) from exc
    except Exception as exc:  # a damaged file makes the unpickler raise almost anything
        if isinstance(exc, OSError) and exc.errno in (errno.EIO, errno.EACCES, errno.EPERM):
            raise  # the disk or its permissions, not the file: the CLI names those
        raise CheckpointError(
            f"cannot read {path} ({_short(exc)}): the file is truncated or not a PyTorch "
            "checkpoint. Download or copy it again."
        ) from exc
    return unwrap_state_dict(obj, path)


def unwrap_state_dict(obj: object, path: Path) -> StateDict:
    """Find the tensor dict inside a training checkpoint and drop DataParallel prefixes."""
    while isinstance(obj, dict) and not _is_state_dict(obj):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise CheckpointError(
                f"{path} is a dict without model weights (keys: {sorted(obj)[:8]}); expected a "
                f"state_dict or one wrapped under one of {_WRAPPER_KEYS}."
            )
        obj = inner
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(
            f"{path} does not hold a state_dict (found {type(obj).__name__}) — pass a checkpoint "
            "of weights (torch.save(model.state_dict(), path))."
        )
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _is_state_dict(obj: dict) -> bool:
    return bool(obj) and sum(isinstance(v, torch.Tensor) for v in obj.values()) >= len(obj) / 2


def read_hf_config(folder: Path) -> dict:
    """``config.json`` of a Hugging Face model folder, checked to be a JSON object."""
    import json

    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{path} is not valid JSON ({_short(exc)}); copy the model folder again."
        ) from exc
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{path} is a JSON {type(config).__name__}, not the object a Hugging Face config "
            "is; copy the model folder again."
        )
    return config


def read_hf_weights(folder: Path) -> StateDict:
    """The weights of a Hugging Face model folder (``model.safetensors`` or ``.bin``)."""
    for name in HF_WEIGHT_FILES:
        if (folder / name).is_file():
            return read_state_dict(folder / name)
    if any(folder.glob("*.index.json")):
        raise CheckpointError(
            f"{folder} holds a sharded checkpoint; merge it into one model.safetensors first."
        )
    raise CheckpointError(f"{folder} has config.json but none of {HF_WEIGHT_FILES}.")


def load_checkpoint(model: nn.Module, entry: ModelEntry, path: str | Path) -> str:
    """Load a checkpoint in any layout the entry knows into ``model``; return the layout name."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(
                f"{path} is a folder without config.json; pass a weights file or a Hugging Face "
                "model folder."
            )
        read_hf_config(path)  # not JSON, or not an object: one line, before any library
        if entry.load_hf_folder is None:
            raise CheckpointError(f"{entry.name} has no Hugging Face folder format; pass a file.")
        fmt, state_dict = "Hugging Face folder", entry.load_hf_folder(path, model)
        fmt_sd = entry.convert_state_dict(state_dict, model)[1]
    else:
        fmt, fmt_sd = entry.convert_state_dict(read_state_dict(path), model)
    check_state_dict(fmt_sd, model, entry, path)
    model.load_state_dict(fmt_sd, strict=False)
    from edgevt.models.init import clear_attention_bias_caches

    clear_attention_bias_caches(model)
    return fmt


def check_state_dict(
    state_dict: StateDict, model: nn.Module, entry: ModelEntry, path: Path
) -> None:
    """Raise one CheckpointError naming missing/unexpected/mis-shaped keys, if any."""
    expected = model.state_dict()
    # BatchNorm's counter is not part of the model's function; old checkpoints lack it.
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if not (missing or unexpected or mismatched):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:3])}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es), e.g. {'; '.join(mismatched[:2])}")
    likely = (
        "a checkpoint for another architecture or size"
        if mismatched or (unexpected and missing)
        else "an incomplete checkpoint"
    )
    raise CheckpointError(
        f"{path} does not fit {entry.name}: {'; '.join(problems)}. Looks like {likely}; "
        "check the model name (`edgevt models`) and the file."
    )


def unpickler_reason(exc: BaseException) -> str:
    """torch's one line of substance ("Unsupported operand 245") without its advice to load
    with weights_only=False, which would run code from the file."""
    detail = str(exc).split("WeightsUnpickler error:")[-1].strip()
    return (detail.splitlines() or ["unreadable"])[0][:80]


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]
