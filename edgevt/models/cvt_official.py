"""microsoft/CvT (``cls_cvt.py``) checkpoint keys <-> transformers ``CvtForImageClassification``.

Both layouts name every tensor by stage and block index, so one table of name patterns maps
each key on its own, in either direction; the model is only consulted to check the result.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from edgevt.errors import CheckpointError
from edgevt.models.levit_official import check_converted

StateDict = dict[str, torch.Tensor]

_HF_STAGE = "cvt.encoder.stages.{s}."
_HF_EMBED = _HF_STAGE + "embedding.convolution_embeddings."
_HF_BLOCK = _HF_STAGE + "layers.{b}."
_HF_ATTN = _HF_BLOCK + "attention.attention."
_HF_CONV = _HF_ATTN + "convolution_projection_{X}.convolution_projection."
_BLOCK = "stage{s}.blocks.{b}."
# (microsoft name, transformers name). {s} stage, {b} block, {p} parameter/buffer name,
# {x} q|k|v in microsoft names, which transformers spells {X} query|key|value.
_PAIRS = [
    ("stage{s}.patch_embed.proj.{p}", _HF_EMBED + "projection.{p}"),
    ("stage{s}.patch_embed.norm.{p}", _HF_EMBED + "normalization.{p}"),
    ("stage{s}.cls_token", _HF_STAGE + "cls_token"),
    # The dw_bn projections: Sequential(conv, bn, rearrange).
    (_BLOCK + "attn.conv_proj_{x}.conv.{p}", _HF_CONV + "convolution.{p}"),
    (_BLOCK + "attn.conv_proj_{x}.bn.{p}", _HF_CONV + "normalization.{p}"),
    (_BLOCK + "attn.proj_{x}.{p}", _HF_ATTN + "projection_{X}.{p}"),
    (_BLOCK + "attn.proj.{p}", _HF_BLOCK + "attention.output.dense.{p}"),
    (_BLOCK + "norm1.{p}", _HF_BLOCK + "layernorm_before.{p}"),
    (_BLOCK + "norm2.{p}", _HF_BLOCK + "layernorm_after.{p}"),
    (_BLOCK + "mlp.fc1.{p}", _HF_BLOCK + "intermediate.dense.{p}"),
    (_BLOCK + "mlp.fc2.{p}", _HF_BLOCK + "output.dense.{p}"),
    ("norm.{p}", "layernorm.{p}"),
    ("head.{p}", "classifier.{p}"),
]
_LONG = {"q": "query", "k": "key", "v": "value"}
_SHORT = {v: k for k, v in _LONG.items()}
_GROUPS = {"s": r"\d+", "b": r"\d+", "p": r"\w+", "x": "[qkv]", "X": "query|key|value"}


def _compile(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w)\}", pattern)  # literal, name, literal, name, ...
    return re.compile(
        "".join(
            re.escape(p) if i % 2 == 0 else f"(?P<{p}>{_GROUPS[p]})" for i, p in enumerate(parts)
        )
    )


_TO_HF = [(_compile(official), hf) for official, hf in _PAIRS]
_TO_OFFICIAL = [(_compile(hf), official) for official, hf in _PAIRS]


def _rename(key: str, table: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, template in table:
        if m := pattern.fullmatch(key):
            groups = m.groupdict()
            if "x" in groups:
                groups["X"] = _LONG[groups["x"]]
            elif "X" in groups:
                groups["x"] = _SHORT[groups["X"]]
            return template.format(**groups)
    return None


def _official_name(key: str) -> str:
    return _rename(key, _TO_OFFICIAL) or key


def _describe(model: nn.Module) -> str:
    config = model.config
    return f"CvT with depth {list(config.depth)} and embed_dim {list(config.embed_dim)}"


def official_cvt_to_hf(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Rename a microsoft/CvT state_dict to the keys of transformers' CvT ``model``."""
    out, unmapped = {}, []
    for key, value in state_dict.items():
        name = _rename(key, _TO_HF)
        if name is None:
            unmapped.append(key)
        else:
            out[name] = value
    what = "microsoft CvT checkpoint"
    hint = f"it is probably a checkpoint for another CvT size than {_describe(model)}"
    return check_converted(out, _official_name, unmapped, model, what, hint)


def hf_cvt_to_official(state_dict: StateDict, model: nn.Module) -> StateDict:
    """The inverse: transformers CvT keys to microsoft/CvT keys (``model`` names errors)."""
    out = {}
    for key, value in state_dict.items():
        name = _rename(key, _TO_OFFICIAL)
        if name is None:
            raise CheckpointError(f"key {key} is not a key of a transformers {_describe(model)}.")
        out[name] = value
    return out
