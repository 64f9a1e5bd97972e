"""The Core ML runner: Apple's runtime on macOS, edgevt's MIL reference interpreter elsewhere."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgevt.artifact import METADATA_KEY, ArtifactInfo
from edgevt.errors import BackendMissingError, EdgevtError
from edgevt.io import artifact_size
from edgevt.targets.base import Runner, require_info

INPUT_NAME, OUTPUT_NAME = "images", "logits"
BACKENDS = ("coreml", "mil-reference-interpreter")
COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence coremltools' progress bars (one per pass, on stderr) and warnings (it warns
    that torch versions after 2.7 are untested, and once per missing macOS-only extension at
    import) while it loads, converts or compresses."""
    import io
    import logging

    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def coremltools():
    try:
        with quiet():
            import coremltools as ct
    except ImportError as exc:
        raise BackendMissingError(
            "the Core ML target needs coremltools: pip install 'edgevt[coreml]'."
        ) from exc
    return ct


def read_coreml_info(path: str | Path) -> ArtifactInfo | None:
    """The ArtifactInfo a package carries (None if it was not written by edgevt)."""
    from edgevt.targets.coreml.mil_interpreter import load_spec

    spec, _ = load_spec(path)
    text = spec.description.metadata.userDefined.get(METADATA_KEY)
    return ArtifactInfo.from_json(text, str(path)) if text else None


class CoreMLRunner(Runner):
    """Apple's Core ML runtime on macOS, else the MIL reference interpreter (NumPy).

    Args:
        threads: interpreter threads (torch's); None = default. Core ML picks its own.
        compute_units: ALL, CPU_ONLY, CPU_AND_GPU or CPU_AND_NE (Core ML only).
        backend: "coreml" or "mil-reference-interpreter"; None = Core ML on macOS, the
            interpreter elsewhere.
    """

    batch = 16  # images per interpreter pass (bounds memory for CvT's large attention maps)

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        info: ArtifactInfo | None = None,
        compute_units: str = "ALL",
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.threads = threads
        if compute_units not in COMPUTE_UNITS:
            raise EdgevtError(
                f"unknown compute units {compute_units!r}; choose from {', '.join(COMPUTE_UNITS)}."
            )
        self.compute_units = compute_units
        if backend is None:
            backend = "coreml" if sys.platform == "darwin" else "mil-reference-interpreter"
        if backend not in BACKENDS:
            raise EdgevtError(f"unknown Core ML backend {backend!r}; choose from {BACKENDS}.")
        if backend == "coreml" and sys.platform != "darwin":
            raise EdgevtError(
                "Apple's Core ML runtime runs only on macOS; use backend "
                "'mil-reference-interpreter' here, or run the package on a Mac."
            )
        self.backend = backend
        self.info = require_info(info or read_coreml_info(self.path), self.path)
        self._model: Any = None

    def _activate(self) -> None:
        ct = coremltools()
        if self.backend == "coreml":
            self._model = ct.models.MLModel(
                str(self.path), compute_units=getattr(ct.ComputeUnit, self.compute_units)
            )
            return
        from edgevt.targets.coreml.mil_interpreter import MilProgram

        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        self._model = MilProgram(self.path)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        if self.backend == "coreml":
            outs = [
                self._model.predict({INPUT_NAME: batch[i : i + 1]})[OUTPUT_NAME]
                for i in range(len(batch))
            ]
        else:
            outs = [
                self._model.run({INPUT_NAME: batch[i : i + self.batch]})[OUTPUT_NAME]
                for i in range(0, len(batch), self.batch)
            ]
        return np.concatenate([np.asarray(o, np.float32).reshape(-1, o.shape[-1]) for o in outs])

    def _deactivate(self) -> None:
        self._model = None

    def describe(self) -> dict[str, Any]:
        ct = coremltools()
        coreml = self.info.extra.get("coreml", {})
        out = {
            "backend": self.backend,
            "coremltools": ct.__version__,
            "artifact": str(self.path),
            "size_bytes": artifact_size(self.path),
            "model": self.info.model,
            "precision": self.info.precision,
            "deployment_target": coreml.get("deployment_target"),
        }
        if self.backend == "coreml":
            out.update({"threads": "default", "compute_units": self.compute_units})
        else:
            import torch

            out["threads"] = self.threads or torch.get_num_threads()
        return out
