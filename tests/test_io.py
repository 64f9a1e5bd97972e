"""Artifacts are written atomically: an interrupted write leaves nothing behind."""

from __future__ import annotations

import pytest

from edgevt.io import atomic_path, sha256, write_json


def test_failed_write_leaves_neither_file_nor_temp(tmp_path) -> None:
    target = tmp_path / "model.onnx"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a model")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_the_previous_file(tmp_path) -> None:
    target = write_json(tmp_path / "eval.json", {"top1": 1.0})
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("{")
        raise KeyboardInterrupt
    assert target.read_text().strip().startswith('{\n  "top1": 1.0')
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]


def test_sha256_of_file_and_folder(tmp_path) -> None:
    (tmp_path / "a").write_text("x")
    assert sha256(tmp_path / "a") == (
        "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
    )
    assert len(sha256(tmp_path)) == 64
