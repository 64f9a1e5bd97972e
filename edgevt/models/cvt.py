"""CvT (transformers' definitions) and the checkpoint layouts it is released in."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from torch import nn

from edgevt.data.preprocess import Preprocess
from edgevt.errors import CheckpointError
from edgevt.models.registry import ModelEntry, StateDict, register_model

# The configs of microsoft/cvt-13, cvt-21 and cvt-w24-384-22k on the Hugging Face hub.
CVT_CONFIGS: dict[str, dict] = {
    "cvt_13": {},
    "cvt_21": {"depth": [1, 4, 16]},
    "cvt_w24": {"embed_dim": [192, 768, 1024], "num_heads": [3, 12, 16], "depth": [2, 2, 20]},
}


def _classifier_class():
    from transformers import CvtForImageClassification

    class CvtClassifier(CvtForImageClassification):
        """transformers' CvT that returns the logits tensor, as every other zoo model does."""

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return super().forward(pixel_values=pixel_values).logits

    return CvtClassifier


def _build(name: str) -> nn.Module:
    from transformers import CvtConfig

    # id2label fixes num_labels to ImageNet-1k like the released checkpoints.
    config = CvtConfig(**CVT_CONFIGS[name], num_labels=1000)
    return _classifier_class()(config).eval()


def convert_cvt_state_dict(state_dict: StateDict, model: nn.Module) -> tuple[str, StateDict]:
    """Recognise microsoft/CvT (``stage0.*``) or transformers (``cvt.encoder.*``) layouts."""
    if any(k.startswith("stage0.") for k in state_dict):
        from edgevt.models.cvt_official import official_cvt_to_hf

        return "microsoft CvT .pth", official_cvt_to_hf(state_dict, model)
    return "transformers", state_dict


def cvt_from_hf_folder(folder: Path, model: nn.Module) -> StateDict:
    """A transformers CvT folder: its weights already use our key layout."""

    from edgevt.models.checkpoint import read_hf_config, read_hf_weights

    config = read_hf_config(folder)
    if config.get("model_type") != "cvt":
        raise CheckpointError(
            f"{folder} holds a {config.get('model_type')!r} model, not CvT: pick the matching "
            "zoo model (`edgevt models`)."
        )
    return read_hf_weights(folder)


for _name, _size in (("cvt_13", 224), ("cvt_21", 224), ("cvt_w24", 384)):
    register_model(
        ModelEntry(
            name=_name,
            family="cvt",
            build=partial(_build, _name),
            # 224 px: resize 256, crop 224 (crop_pct 0.875); the 384 px W24 uses the full image.
            preprocess=Preprocess(
                input_size=_size, crop_pct=0.875 if _size == 224 else 1.0, interpolation="bicubic"
            ),
            source=f"transformers:CvtForImageClassification({_name})",
            convert_state_dict=convert_cvt_state_dict,
            load_hf_folder=cvt_from_hf_folder,
            description="Convolutional vision transformer",
            checkpoint_formats=("HF folder", "microsoft .pth", "transformers .safetensors"),
        )
    )
