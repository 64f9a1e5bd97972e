"""The one runner interface every backend implements (after Polygraphy's runners).

A runner is created cheaply, ``activate()``-d (load session/interpreter), asked to ``infer``
batches of preprocessed images (NCHW float32) and returns logits; ``describe()`` says what it
is. Use it as a context manager. Validation, host benchmarks and device bundles all use it.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from edgevt.artifact import ArtifactInfo


class Runner(abc.ABC):
    """Load once, infer many times."""

    #: what the artifact says about itself; set by the subclass before or during activate().
    info: ArtifactInfo

    def __init__(self) -> None:
        self.is_active = False

    def activate(self) -> None:
        if not self.is_active:
            self._activate()
            self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, classes) float32 for images (N, 3, H, W) float32."""
        if not self.is_active:
            self.activate()
        return self._infer(np.ascontiguousarray(batch, dtype=np.float32))

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Backend, artifact, precision, threads: what a report needs to say what ran."""

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray: ...

    def _deactivate(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()
