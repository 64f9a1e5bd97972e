"""The model zoo and checkpoint loading."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from edgevt.errors import CheckpointError
from edgevt.models.registry import ModelEntry, get_entry, list_models, register_model

__all__ = ["LoadedModel", "ModelEntry", "get_entry", "list_models", "load_model", "register_model"]


@dataclass
class LoadedModel:
    """A zoo model in eval mode plus where its weights came from."""

    model: nn.Module
    entry: ModelEntry
    weights: str  # human-readable: "random init (seed 0)" or "<format> from <path>"
    checkpoint: Path | None = None

    @property
    def random_weights(self) -> bool:
        return self.checkpoint is None


def resolve_checkpoint(
    name: str, checkpoint: str | Path | None = None, pretrained: bool = False
) -> str | Path | None:
    """The checkpoint ``load_model`` will read, checked before any work: an unknown model, a
    missing file, or --pretrained where no checkpoint is installable fail here."""
    entry = get_entry(name)
    if pretrained:
        if checkpoint is not None:
            raise CheckpointError("pass either --checkpoint or --pretrained, not both.")
        if entry.pretrained_path is None:
            raise CheckpointError(
                f"{name} has no locally installable pretrained checkpoint (no weights can be "
                "downloaded here); pass --checkpoint PATH."
            )
        return entry.pretrained_path()
    if checkpoint is not None and not Path(checkpoint).exists():
        raise CheckpointError(f"checkpoint {checkpoint} does not exist; check the path.")
    return checkpoint


def load_model(
    name: str,
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    seed: int = 0,
) -> LoadedModel:
    """Build a zoo model and load its weights.

    Args:
        name: a zoo name (``edgevt.list_models()``).
        checkpoint: a local checkpoint file or Hugging Face folder in any layout the model
            knows. None means random weights, made non-degenerate (see ``models.init``):
            BatchNorm statistics come from 8 images of ``$EDGEVT_DATA/imagenet-sample1000``
            when present, else from photo-like noise.
        pretrained: use the real checkpoint installable from the package index, where the
            model has one (efficientnet_lite0).
        seed: seed of the random weights when there is no checkpoint.
    """
    import torch

    entry = get_entry(name)
    checkpoint = resolve_checkpoint(name, checkpoint, pretrained)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise CheckpointError(f"seed {seed!r}: give an integer from 0 to {2**32 - 1}.")
    torch.manual_seed(seed)
    model = entry.build()
    if checkpoint is None:
        from edgevt.data.imagenet import default_data_root, sample_batch
        from edgevt.models.init import randomize_degenerate_parameters

        # 64 images: BatchNorm statistics from fewer leave some late-stage channels (16 tokens
        # per image) with a variance far below what other images give: outlier channels.
        images, _ = sample_batch(
            entry.preprocess, default_data_root() / "imagenet-sample1000", n=64
        )
        randomize_degenerate_parameters(
            model,
            seed,
            entry.preprocess.input_size,
            None if images is None else torch.from_numpy(images),
        )
        return LoadedModel(model.eval(), entry, f"random init (seed {seed})")
    from edgevt.models.checkpoint import load_checkpoint

    checkpoint = Path(checkpoint)
    fmt = load_checkpoint(model, entry, checkpoint)
    check_weights(model, checkpoint)
    return LoadedModel(model.eval(), entry, f"{fmt} from {checkpoint}", checkpoint)


def check_weights(model: nn.Module, source: str | Path) -> None:
    """Refuse weights no export can use: NaN or inf anywhere, or a negative BatchNorm
    variance (its square root is NaN). Without this, fusion is blamed for the NaN logits."""
    import torch

    for name, t in (*model.named_parameters(), *model.named_buffers()):
        if not t.is_floating_point():
            continue
        if not bool(torch.isfinite(t).all()):
            raise CheckpointError(
                f"checkpoint {source} holds NaN or inf in {name}: it is damaged or from a "
                "diverged training run — use another checkpoint."
            )
        if name.endswith("running_var") and bool((t < 0).any()):
            raise CheckpointError(
                f"checkpoint {source} holds a negative BatchNorm variance in {name}: it is "
                "damaged — use another checkpoint."
            )
