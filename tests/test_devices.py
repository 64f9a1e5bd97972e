"""Device profiles in targets/: every one loads, and broken ones fail with one clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgevt.devices import list_profiles, load_profile, profiles_dir
from edgevt.errors import EdgevtError

REQUIRED_DEVICES = {"raspberry-pi-5", "pixel-8", "jetson-orin-nano", "iphone-15", "x86-host"}


def test_the_shipped_profiles_load_and_cover_the_devices_we_support() -> None:
    assert REQUIRED_DEVICES <= set(list_profiles())
    for name in list_profiles():
        profile = load_profile(name)
        assert profile.name == name == profile.path.stem
        assert profile.threads and all(t >= 1 for t in profile.threads)
    assert load_profile("jetson-orin-nano").targets[0] == "tensorrt"
    assert "CPU_AND_NE" in load_profile("iphone-15").compute_units


def test_a_profile_path_works_and_bad_profiles_are_named(tmp_path: Path) -> None:
    mine = tmp_path / "my-board.toml"
    text = (profiles_dir() / "raspberry-pi-5.toml").read_text()
    mine.write_text(text.replace('"raspberry-pi-5"', '"my-board"'))
    assert load_profile(mine).name == "my-board"

    with pytest.raises(EdgevtError, match="unknown device 'rpi'; known: .*raspberry-pi-5"):
        load_profile("rpi")
    broken = tmp_path / "broken.toml"
    broken.write_text("name = [")
    with pytest.raises(EdgevtError, match="not valid TOML"):
        load_profile(broken)
    broken.write_text(text.replace("targets =", "tragets ="))
    with pytest.raises(EdgevtError, match="missing targets; unknown key.* tragets"):
        load_profile(broken)


def test_a_profile_naming_an_unknown_target_is_refused_on_load(tmp_path: Path) -> None:
    """It used to load and then crash `edgevt bundle` with a KeyError (an unknown artifact
    kind); the profile is now checked against the target registry when it is read."""
    import subprocess
    import sys

    text = (profiles_dir() / "raspberry-pi-5.toml").read_text()
    broken = tmp_path / "tvm-board.toml"
    broken.write_text(text.replace('targets = ["tflite", "onnx"', 'targets = ["tvm", "onnx"'))
    with pytest.raises(EdgevtError, match="unknown target.*'tvm'.*known: onnx"):
        load_profile(broken)
    proc = subprocess.run(
        [sys.executable, "-m", "edgevt.cli", "bundle", str(tmp_path), "--device", str(broken),
         "-o", str(tmp_path / "b")], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.startswith("edgevt: error:")
    assert "'tvm'" in proc.stderr and "Traceback" not in proc.stderr
    old = tmp_path / "old.toml"
    listed = 'targets = ["tflite", "onnx", "executorch"]'
    old.write_text(text.replace(listed, 'artifacts = ["mlpackage"]'))
    with pytest.raises(EdgevtError, match="are now one key, targets"):
        load_profile(old)
