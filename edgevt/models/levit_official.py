"""facebookresearch/LeViT checkpoint keys <-> timm ``LevitDistilled`` keys, mapped by name.

The official model keeps one flat ``blocks`` Sequential: per stage, ``Residual(Attention)`` and
``Residual(MLP)`` alternate, and after every stage but the last come an ``AttentionSubsample``
(not wrapped in a Residual) and a ``Residual(MLP)``. timm puts that subsample pair at the start
of the next stage (``stages.i.downsample``). The mapping is derived from the timm model's
stage depths, so the dict order of a checkpoint never matters.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn

from edgevt.errors import CheckpointError

StateDict = dict[str, torch.Tensor]

# timm sub-path -> (offset in the official flat list, official sub-path). Offset 1 is the
# Residual(MLP) that follows each attention (or subsample) in the official list.
_BLOCK_PARTS = {
    "attn.qkv.": (0, "m.qkv."),
    "attn.proj.ln.": (0, "m.proj.1."),  # proj = Sequential(Hardswish, Linear_BN)
    "attn.attention_biases": (0, "m.attention_biases"),
    "mlp.ln1.": (1, "m.0."),  # MLP = Sequential(Linear_BN, Hardswish, Linear_BN)
    "mlp.ln2.": (1, "m.2."),
}
_DOWNSAMPLE_PARTS = {
    "attn_downsample.kv.": (0, "kv."),
    "attn_downsample.q.ln.": (0, "q.1."),  # q = Sequential(Subsample, Linear_BN)
    "attn_downsample.proj.ln.": (0, "proj.1."),
    "attn_downsample.attention_biases": (0, "attention_biases"),
    "mlp.ln1.": (1, "m.0."),
    "mlp.ln2.": (1, "m.2."),
}
_STAGE_KEY = re.compile(r"stages\.(\d+)\.(downsample|blocks\.(\d+))\.(.+)")
_STEM_KEY = re.compile(r"stem\.conv([1-4])\.(.+)")  # b16: Conv2d_BN at 0, 2, 4, 6
_HEAD_KEY = re.compile(r"(head|head_dist)\.(bn|linear)\.(.+)")


def _flat_index(model: nn.Module) -> dict[tuple[int, int], int]:
    """(stage, block or -1 for the downsample) -> index in the official ``blocks`` list."""
    index, pos = {}, 0
    for i, stage in enumerate(model.stages):
        if not isinstance(stage.downsample, nn.Identity):
            index[(i, -1)] = pos
            pos += 2  # AttentionSubsample, Residual(MLP)
        for j in range(len(stage.blocks)):
            index[(i, j)] = pos
            pos += 2  # Residual(Attention), Residual(MLP)
    return index


def _official_name(key: str, index: dict[tuple[int, int], int]) -> str:
    """The official name of one timm LeViT state_dict key."""
    if m := _STEM_KEY.fullmatch(key):
        rest = m[2].replace("linear.", "c.", 1)
        return f"patch_embed.{2 * (int(m[1]) - 1)}.{rest}"
    if m := _HEAD_KEY.fullmatch(key):
        return f"{m[1]}.{'l' if m[2] == 'linear' else 'bn'}.{m[3]}"
    if m := _STAGE_KEY.fullmatch(key):
        stage, block = int(m[1]), -1 if m[3] is None else int(m[3])
        parts = _DOWNSAMPLE_PARTS if block < 0 else _BLOCK_PARTS
        for prefix, (offset, official) in parts.items():
            if m[4].startswith(prefix):
                # Linear_BN/Conv2d_BN name their layer ``c``; timm's ConvNorm/LinearNorm ``linear``.
                rest = m[4][len(prefix) :].replace("linear.", "c.", 1)
                return f"blocks.{index[(stage, block)] + offset}.{official}{rest}"
    raise CheckpointError(
        f"the model's key {key} is not part of a timm LeViT this converter knows; "
        "build the model with timm.create_model('levit_128s') (or another levit_* size)."
    )


def _timm_to_official_names(model: nn.Module) -> dict[str, str]:
    if not hasattr(model, "stages") or not hasattr(model, "stem"):
        raise CheckpointError(f"{type(model).__name__} is not a timm LeViT model.")
    index = _flat_index(model)
    return {k: _official_name(k, index) for k in model.state_dict()}


def _describe(model: nn.Module) -> str:
    arch = getattr(model, "pretrained_cfg", {}).get("architecture", "LeViT")
    depths = tuple(len(s.blocks) for s in model.stages)
    return f"{arch} (stage depths {depths})"


def check_converted(
    converted: StateDict,
    origin: Callable[[str], str],
    unmapped: list[str],
    model: nn.Module,
    what: str,
    hint: str,
) -> StateDict:
    """Raise a one-line CheckpointError if ``converted`` does not fit ``model``, else return it.

    ``origin`` gives the checkpoint's own name for a model key, which the messages use;
    ``unmapped`` lists checkpoint keys with no name in the model's layout at all; ``hint`` names
    the likely cause of a misfit. BatchNorm's ``num_batches_tracked`` does not change inference
    and some exports drop it: missing counters are filled from the model.
    """
    expected = model.state_dict()
    extra = unmapped + [origin(k) for k in converted if k not in expected]
    if extra:
        more = f" ({len(extra) - 1} more)" if len(extra) > 1 else ""
        raise CheckpointError(
            f"{what}: key {extra[0]} has no counterpart in the model{more}; {hint}."
        )
    for k, v in expected.items():
        if k in converted and converted[k].shape != v.shape:
            raise CheckpointError(
                f"{what}: {origin(k)} has shape {tuple(converted[k].shape)} but the model's {k} "
                f"needs {tuple(v.shape)}; {hint}."
            )
    out = dict(converted)
    for k, v in expected.items():
        if k not in out and k.endswith("num_batches_tracked"):
            out[k] = v.clone()
    missing = [k for k in expected if k not in out]
    if missing:
        raise CheckpointError(
            f"{what}: {len(missing)} tensor(s) missing, first "
            f"{', '.join(origin(k) for k in missing[:3])}; the file is incomplete or for another "
            "model size."
        )
    return out


def official_levit_to_timm(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Rename a facebookresearch ``levit.py`` state_dict to the keys of timm's ``model``.

    ``attention_bias_idxs`` buffers are dropped: timm recomputes the same indices (both
    number the offsets (|dy|, |dx|) as ``|dy| * resolution + |dx|``).
    """
    if "patch_embed.0.weight" in state_dict:
        # levit.py's fuse=True folds every BatchNorm into a biased conv/linear: no BN keys left.
        raise CheckpointError(
            "facebookresearch LeViT checkpoint was saved after BatchNorm fusion (fuse=True); "
            "save the state_dict of the unfused model instead."
        )
    origin = _timm_to_official_names(model)
    to_timm = {v: k for k, v in origin.items()}
    out, unmapped = {}, []
    for key, value in state_dict.items():
        if key.endswith("attention_bias_idxs"):
            continue
        if key in to_timm:
            out[to_timm[key]] = value
        else:
            unmapped.append(key)
    what = "facebookresearch LeViT checkpoint"
    hint = f"it is probably a checkpoint for another LeViT size than {_describe(model)}"
    return check_converted(out, origin.__getitem__, unmapped, model, what, hint)


def timm_levit_to_official(state_dict: StateDict, model: nn.Module) -> StateDict:
    """The inverse: timm keys to facebookresearch keys, with the official index buffers."""
    names = _timm_to_official_names(model)
    out = {}
    for key, value in state_dict.items():
        if key not in names:
            raise CheckpointError(f"key {key} is not a key of the timm model {_describe(model)}.")
        out[names[key]] = value
    # The official model persists attention_bias_idxs next to each attention_biases table;
    # timm's non-persistent buffer holds the same int64 (N_q, N_k) indices.
    for name, module in model.named_modules():
        idxs = getattr(module, "attention_bias_idxs", None)
        if isinstance(idxs, torch.Tensor):
            biases = names[f"{name}.attention_biases"]
            out[biases.replace("attention_biases", "attention_bias_idxs")] = idxs.clone()
    return out
