"""LeViT (timm's definitions) and the checkpoint layouts it is released in."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import torch
from torch import nn

from edgevt.data.preprocess import Preprocess
from edgevt.errors import CheckpointError
from edgevt.models.registry import ModelEntry, StateDict, register_model

# timm's pretrained_cfg for LeViT: 224 px, crop_pct 0.9, bicubic, ImageNet mean/std.
LEVIT_PREPROCESS = Preprocess(input_size=224, crop_pct=0.9, interpolation="bicubic")


def _build(variant: str) -> nn.Module:
    import timm

    return timm.create_model(variant, pretrained=False)


def convert_levit_state_dict(state_dict: StateDict, model: nn.Module) -> tuple[str, StateDict]:
    """Recognise facebookresearch LeViT (``patch_embed.*``) or timm (``stem.*``) layouts."""
    if any(k.startswith("patch_embed.") for k in state_dict):
        from edgevt.models.levit_official import official_levit_to_timm

        return "facebookresearch LeViT .pth", official_levit_to_timm(state_dict, model)
    # timm never persisted attention_bias_idxs, older exports did: it is recomputed anyway.
    return "timm", {k: v for k, v in state_dict.items() if "attention_bias_idxs" not in k}


def levit_from_hf_folder(folder: Path, model: nn.Module) -> StateDict:
    """Read a Hugging Face ``LevitForImageClassificationWithTeacher`` folder into timm keys.

    transformers converted timm's LeViT weights tensor by tensor in module order, so the two
    layouts correspond one to one in order; every pair is checked for shape.
    """
    from transformers import LevitConfig, LevitForImageClassificationWithTeacher

    from edgevt.models.checkpoint import read_hf_weights

    config = LevitConfig.from_pretrained(folder)
    hf = LevitForImageClassificationWithTeacher(config)
    weights = read_hf_weights(folder)
    missing, unexpected = hf.load_state_dict(weights, strict=False)
    missing = [k for k in missing if "attention_bias_idxs" not in k]
    if missing or unexpected:
        raise CheckpointError(
            f"{folder} is not a LeViT model folder that transformers can read "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})."
        )
    src = [(k, v) for k, v in hf.state_dict().items() if "attention_bias_idxs" not in k]
    dst = list(model.state_dict().items())
    if len(src) != len(dst):
        raise CheckpointError(
            f"{folder} holds a LeViT with {len(src)} tensors but the requested model has "
            f"{len(dst)}: it is a different LeViT size ({_describe_levit_config(config)})."
        )
    out = {}
    for (hk, hv), (tk, tv) in zip(src, dst, strict=True):
        if hv.shape != tv.shape and tk.startswith("head"):
            raise CheckpointError(
                f"{folder} has a {hv.shape[0]}-class head; the zoo's LeViTs are ImageNet-1k "
                "(1000 classes)."
            )
        if hv.shape != tv.shape:
            raise CheckpointError(
                f"{folder}: tensor {hk} has shape {tuple(hv.shape)} where {tk} needs "
                f"{tuple(tv.shape)}: it is a different LeViT size "
                f"({_describe_levit_config(config)})."
            )
        out[tk] = hv
    return out


def _describe_levit_config(config) -> str:
    return json.dumps({"hidden_sizes": config.hidden_sizes, "depths": config.depths})


for _name in ("levit_128s", "levit_128", "levit_192", "levit_256", "levit_384"):
    register_model(
        ModelEntry(
            name=_name,
            family="levit",
            build=partial(_build, _name),
            preprocess=LEVIT_PREPROCESS,
            source=f"timm:{_name}",
            convert_state_dict=convert_levit_state_dict,
            load_hf_folder=levit_from_hf_folder,
            description="LeViT hybrid CNN/transformer (distilled head)",
            checkpoint_formats=("timm .pth/.safetensors", "facebookresearch .pth", "HF folder"),
        )
    )


def levit_attention_modules(model: nn.Module) -> list[nn.Module]:
    """Every timm LeViT attention block that carries an attention-bias table."""
    return [
        m for m in model.modules() if isinstance(getattr(m, "attention_biases", None), torch.Tensor)
    ]
