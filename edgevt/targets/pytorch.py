"""PyTorch eager runner: the fp32 reference every artifact is compared against."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from edgevt.artifact import ArtifactInfo
from edgevt.targets.base import Runner


class TorchRunner(Runner):
    def __init__(self, model: nn.Module, info: ArtifactInfo, threads: int | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        self.info = info
        self.threads = threads

    def _activate(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)

    @torch.inference_mode()
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(batch)).float().numpy()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "pytorch",
            "torch": torch.__version__,
            "model": self.info.model,
            "precision": self.info.precision,
            "weights": self.info.weights,
            "fused": bool(self.info.extra.get("fused", False)),
            "threads": self.threads or torch.get_num_threads(),
        }
