"""What an exported artifact carries about itself, so `edgevt eval model.onnx` needs no flags."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from edgevt.data.preprocess import Preprocess

METADATA_KEY = "edgevt"


@dataclass
class ArtifactInfo:
    """Preprocessing, class mapping and provenance of a model or artifact.

    ``classes`` lists the wnid of each output index (ImageNet-1k order for the zoo).
    """

    model: str
    preprocess: Preprocess
    classes: list[str]
    target: str = "pytorch"
    precision: str = "fp32"
    weights: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "model": self.model,
                "target": self.target,
                "precision": self.precision,
                "weights": self.weights,
                "preprocess": self.preprocess.to_dict(),
                "classes": self.classes,
                "extra": self.extra,
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes, origin: str = "the artifact") -> ArtifactInfo:
        """Parse what ``to_json`` wrote; damaged metadata is one EdgevtError naming ``origin``."""
        from edgevt.errors import EdgevtError

        try:
            data = json.loads(text)
            info = cls(
                model=str(data["model"]),
                preprocess=Preprocess.from_dict(data["preprocess"]),
                classes=[str(c) for c in data["classes"]],
                target=str(data.get("target", "")),
                precision=str(data.get("precision", "fp32")),
                weights=str(data.get("weights", "")),
                extra=dict(data.get("extra", {})),
            )
            size = info.preprocess.input_size
            if not (isinstance(size, int) and size > 0) or not info.classes:
                raise ValueError(f"input size {size!r}, {len(info.classes)} classes")
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise EdgevtError(
                f"corrupt edgevt metadata in {origin} ({type(exc).__name__}: {exc}); re-export "
                "it with `edgevt export`."
            ) from None
        return info
