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
    def from_json(cls, text: str) -> ArtifactInfo:
        data = json.loads(text)
        return cls(
            model=data["model"],
            preprocess=Preprocess.from_dict(data["preprocess"]),
            classes=list(data["classes"]),
            target=data.get("target", ""),
            precision=data.get("precision", "fp32"),
            weights=data.get("weights", ""),
            extra=data.get("extra", {}),
        )
