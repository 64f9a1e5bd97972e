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
