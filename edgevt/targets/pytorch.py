"""PyTorch eager runner: the fp32 reference every artifact is compared against."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from edgevt.artifact import ArtifactInfo
from edgevt.targets.base import Runner

if TYPE_CHECKING:
    from torch import nn


class TorchRunner(Runner):
    def __init__(self, model: nn.Module, info: ArtifactInfo, threads: int | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        self.info = info
        self.threads = threads

    def _activate(self) -> None:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(batch)).float().numpy()

    def describe(self) -> dict[str, Any]:
        import torch

        return {
            "backend": "pytorch",
            "torch": torch.__version__,
            "model": self.info.model,
            "precision": self.info.precision,
            "weights": self.info.weights,
            "fused": bool(self.info.extra.get("fused", False)),
            "threads": self.threads or torch.get_num_threads(),
        }
