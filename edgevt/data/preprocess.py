"""Eval preprocessing as data: every model entry and every artifact carries one of these.

Implemented with PIL and NumPy only (no torchvision), so the same code can run inside a device
bundle that has nothing but NumPy and the device's runtime.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

_INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to ``resize``, centre-crop ``input_size``, normalise.

    ``resize`` defaults to ``floor(input_size / crop_pct)`` as in timm's eval transform.
    """

    input_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"interpolation {self.interpolation!r} is not one of {sorted(_INTERPOLATIONS)}"
            )

    @property
    def resize(self) -> int:
        return int(math.floor(self.input_size / self.crop_pct))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "resize": self.resize}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        """What ``to_dict`` wrote; ValueError for values no image can be prepared with."""
        p = cls(
            input_size=int(data["input_size"]),
            crop_pct=float(data["crop_pct"]),
            interpolation=str(data["interpolation"]),
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
        )
        if not (0 < p.crop_pct <= 1):
            raise ValueError(f"crop_pct {p.crop_pct} is not in (0, 1]")
        if len(p.mean) != 3 or len(p.std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), not {len(p.mean)}/{len(p.std)}")
        if not all(math.isfinite(v) for v in p.mean) or not all(
            math.isfinite(v) and v > 0 for v in p.std
        ):
            raise ValueError(f"mean {p.mean} / std {p.std}: finite, std positive")
        if p.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation {p.interpolation!r}")
        return p

    def __call__(self, image: Image.Image) -> np.ndarray:
        """PIL image (any mode) -> float32 CHW array, normalised."""
        return self.normalize(self.crop(image))

    def normalize(self, crop: np.ndarray) -> np.ndarray:
        """uint8 HWC crop (``crop``) -> float32 CHW array, normalised: the half a device
        bundle does itself, so its evaluation images travel as uint8."""
        array = np.asarray(crop, dtype=np.float32) / 255.0
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(array.transpose(2, 0, 1))

    def crop(self, image: Image.Image) -> np.ndarray:
        """PIL image (any mode) -> the resized, centre-cropped uint8 HWC RGB array."""
        image = image.convert("RGB")  # greyscale, CMYK and palette JPEGs become RGB
        w, h = image.size
        # As torchvision's Resize(int): the shorter side gets exactly `resize`.
        if w <= h:
            size = (self.resize, int(self.resize * h / w))
        else:
            size = (int(self.resize * w / h), self.resize)
        image = image.resize(size, _INTERPOLATIONS[self.interpolation])
        left = int(round((size[0] - self.input_size) / 2.0))
        top = int(round((size[1] - self.input_size) / 2.0))
        image = image.crop((left, top, left + self.input_size, top + self.input_size))
        return np.asarray(image, dtype=np.uint8)

    def load(self, path: str | Path) -> np.ndarray:
        with Image.open(path) as image:
            return self(image)
